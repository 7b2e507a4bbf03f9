//! The dashboard's routes over a real socket: the shell on every page path, each
//! asset with its content type and exactly its embedded bytes (plain and
//! gzipped), the security and caching headers, and 404 for anything else. The
//! pages themselves are driven in a browser by `crates/weir/tests/browser`.

mod common;

use std::io::Read;

use common::TestServer;
use reqwest::header::{
    HeaderMap, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY,
    CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use reqwest::StatusCode;

fn header(h: &HeaderMap, name: reqwest::header::HeaderName) -> &str {
    h.get(&name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .to_str()
        .unwrap()
}

/// The headers every dashboard response carries.
fn assert_secure(h: &HeaderMap) {
    let csp = header(h, CONTENT_SECURITY_POLICY);
    assert_eq!(csp, weir_server::ui::CSP);
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(h, X_CONTENT_TYPE_OPTIONS), "nosniff");
}

/// The paths under the asset base that `text` names (`{{base}}/x` in the shell,
/// `from './x.js'` in a module).
fn referenced(text: &str, base: &str) -> Vec<String> {
    let mut out = Vec::new();
    for piece in text.split(base).skip(1) {
        out.push(
            piece
                .split('"')
                .next()
                .unwrap()
                .trim_start_matches('/')
                .to_owned(),
        );
    }
    for piece in text.split("from './").skip(1) {
        out.push(piece.split('\'').next().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn the_shell_is_served_for_every_page() {
    let s = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    for path in [
        "/",
        "/ui",
        "/ui/",
        "/ui/queues/emails",
        "/ui/tasks/01J0000000000000000000000",
        "/ui/groups/01J0000000000000000000000",
    ] {
        let res = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers().clone();
        assert_eq!(header(&h, CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(header(&h, CACHE_CONTROL), "no-cache", "{path}");
        assert_secure(&h);
        let html = res.text().await.unwrap();
        let base = format!("/ui/assets/{}/", weir_server::ui::version());
        assert!(html.contains(&format!("{base}app.js")), "{html}");
        // No inline script or style for the CSP to refuse.
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "{html}"
        );
    }
    let res = c.head(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn every_asset_is_served_with_its_embedded_bytes() {
    let s = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    let base = format!("/ui/assets/{}/", weir_server::ui::version());
    let html = c.get(&s.base).send().await.unwrap().text().await.unwrap();

    // Walk from the shell through every module's imports: each file the page
    // loads is served, so none can be missing from the embedded list.
    let mut todo = referenced(&html, &base);
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let url = format!("{}{base}{path}", s.base);
        let res = c.get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers().clone();
        let want = match path.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("an asset of an unexpected kind: {other}"),
        };
        assert_eq!(header(&h, CONTENT_TYPE), want, "{path}");
        assert_eq!(
            header(&h, CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        assert_secure(&h);
        assert!(h.get(CONTENT_ENCODING).is_none(), "not asked for gzip");
        let body = res.bytes().await.unwrap();
        let embedded = weir_server::ui::asset_bytes(&path).unwrap();
        assert_eq!(&body[..], embedded, "{path}");

        // The same bytes gzipped, for a client that takes gzip.
        let res = c
            .get(&url)
            .header(ACCEPT_ENCODING, "gzip, deflate")
            .send()
            .await
            .unwrap();
        assert_eq!(header(res.headers(), CONTENT_ENCODING), "gzip");
        let gz = res.bytes().await.unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, embedded, "{path} gzipped");

        if path.ends_with(".js") {
            todo.extend(referenced(std::str::from_utf8(embedded).unwrap(), &base));
        }
    }
    for needed in ["app.js", "queue.js", "vendor/uPlot.iife.min.js", "app.css"] {
        assert!(
            seen.contains(needed),
            "{needed} not reached from the shell: {seen:?}"
        );
    }
    // uPlot's license ships with it.
    let res = c
        .get(format!("{}{base}vendor/uPlot.LICENSE", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("MIT License"));
    s.stop().await;
}

#[tokio::test]
async fn anything_else_is_a_404() {
    let s = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    let v = weir_server::ui::version();
    for path in [
        format!("/ui/assets/{v}/nope.js"),
        format!("/ui/assets/{v}/vendor/"),
        format!("/ui/assets/{v}/..%2F..%2FCargo.toml"),
        format!("/ui/assets/{v}/index.html"),
        // Another version's asset: never this version's bytes under its name.
        "/ui/assets/0000000000000000/app.js".to_owned(),
        "/ui/nope".to_owned(),
        "/ui/queues/a/b".to_owned(),
    ] {
        let res = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            header(res.headers(), CONTENT_TYPE),
            "application/problem+json",
            "{path}"
        );
    }
    s.stop().await;
}
