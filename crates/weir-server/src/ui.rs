//! The web dashboard: a small front end of plain JavaScript modules (no build
//! step) and a vendored uPlot, embedded in the binary and served at `GET /` and
//! `/ui/…`. Every page is the same HTML shell; its scripts read the page from the
//! path and draw it from the JSON API (`ui/app.js`), so this module only serves
//! bytes, with the headers that keep them safe: a strict Content-Security-Policy
//! (scripts, styles and fetches from this origin only, no inline script or style),
//! `nosniff`, and caching that never serves a stale script (assets live under a
//! path naming a hash of all of them, so they can be cached for good).

use std::io::Write;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

/// The policy on every dashboard response. `default-src 'none'` denies whatever is
/// not named; scripts and styles come from this origin only (uPlot styles its
/// elements through the CSSOM, which `style-src` does not govern); `connect-src
/// 'self'` is the JSON API; no page may frame the dashboard (clickjacking of its
/// write buttons).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Where the shell finds the assets; `{v}` is `version()`.
const ASSET_BASE: &str = "/ui/assets/";

/// The shell's stand-in for the versioned asset base, replaced once at first use.
const ASSET_BASE_MARK: &str = "{{ASSETS}}";

/// One embedded file.
struct Asset {
    /// Its path under the asset base.
    path: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            bytes: include_bytes!(concat!("../ui/", $path)),
            content_type: $type,
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the dashboard loads, embedded at build time.
const ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("session.js", JS),
    asset!("signin.js", JS),
    asset!("charts.js", JS),
    asset!("overview.js", JS),
    asset!("queue.js", JS),
    asset!("task.js", JS),
    asset!("group.js", JS),
    asset!("app.css", CSS),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
    asset!("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
];

/// The page shell, before its asset base is filled in.
const SHELL: &str = include_str!("../ui/index.html");

/// The dashboard's routes, merged into the API's router (`api::router`).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    PAGES
        .iter()
        .fold(Router::new(), |r, page| r.route(page, get(shell)))
        .route(ASSETS_ROUTE, get(asset))
}

/// The dashboard's pages (each the same shell; the script draws the page its
/// path names) and the route of its assets: the router and the API document
/// (`openapi::document`) are both made from these.
pub const PAGES: [&str; 6] = [
    "/",
    "/ui",
    "/ui/",
    "/ui/queues/{queue}",
    "/ui/tasks/{id}",
    "/ui/groups/{id}",
];
pub const ASSETS_ROUTE: &str = "/ui/assets/{version}/{*path}";

/// The content types of the assets (for the API document).
pub fn asset_content_types() -> Vec<&'static str> {
    let mut types: Vec<&str> = ASSETS.iter().map(|a| a.content_type).collect();
    types.sort_unstable();
    types.dedup();
    types
}

/// A hash of every asset's path and bytes (FNV-1a, 64 bits, as 16 hex digits):
/// it changes whenever any asset does, so a browser holding an old one never
/// mixes it with new ones.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let files = ASSETS.iter().map(|a| (a.path.as_bytes(), a.bytes));
        for (path, bytes) in files.chain([(&b"index.html"[..], SHELL.as_bytes())]) {
            for &b in path.iter().chain(&[0]).chain(bytes) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    })
}

/// The shell with its asset base filled in.
fn shell_html() -> &'static str {
    static HTML: OnceLock<String> = OnceLock::new();
    HTML.get_or_init(|| SHELL.replace(ASSET_BASE_MARK, &format!("{ASSET_BASE}{}", version())))
}

/// Every page: the shell, revalidated on each load (`no-cache`) so a new server
/// version's assets are picked up at once.
async fn shell(headers: HeaderMap) -> Response {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    let html = shell_html().as_bytes();
    let mut res = encoded(&headers, html, &GZ).into_response();
    secure(&mut res, "text/html; charset=utf-8", "no-cache");
    res
}

/// One asset, cached for good: its URL changes when it does. An unknown file, or
/// one asked for under another version than this server's, is a 404.
async fn asset(Path((v, path)): Path<(String, String)>, headers: HeaderMap) -> Response {
    static GZ: [OnceLock<Vec<u8>>; ASSETS.len()] = [const { OnceLock::new() }; ASSETS.len()];
    let found = ASSETS.iter().position(|a| a.path == path);
    let Some(i) = found.filter(|_| v == version()) else {
        return ApiError::not_found(format!("no dashboard asset {v}/{path}")).into_response();
    };
    let a = &ASSETS[i];
    let mut res = encoded(&headers, a.bytes, &GZ[i]).into_response();
    secure(
        &mut res,
        a.content_type,
        "public, max-age=31536000, immutable",
    );
    res
}

/// `bytes`, gzipped (once, kept in `gz`) when the client takes gzip.
fn encoded(headers: &HeaderMap, bytes: &'static [u8], gz: &'static OnceLock<Vec<u8>>) -> Response {
    let vary = [(header::VARY, HeaderValue::from_static("accept-encoding"))];
    if !accepts_gzip(headers) {
        return (vary, bytes).into_response();
    }
    let body = gz.get_or_init(|| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).expect("gzip into memory");
        e.finish().expect("gzip into memory")
    });
    let encoding = (header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    (vary, [encoding], body.as_slice()).into_response()
}

/// Whether `Accept-Encoding` lists gzip with a weight above zero.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !zero
        })
}

/// The headers every dashboard response carries.
fn secure(res: &mut Response, content_type: &'static str, cache: &'static str) {
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    debug_assert_eq!(res.status(), StatusCode::OK);
}

/// The embedded bytes of one asset, for tests that check what is served.
pub fn asset_bytes(path: &str) -> Option<&'static [u8]> {
    ASSETS.iter().find(|a| a.path == path).map(|a| a.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn gzip_is_taken_only_when_offered() {
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("br;q=1.0, GZIP;q=0.5")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("br, x-gzip")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_shell_names_the_versioned_assets() {
        let html = shell_html();
        assert!(!html.contains(ASSET_BASE_MARK));
        assert!(html.contains(&format!("/ui/assets/{}/app.js", version())));
        assert_eq!(version().len(), 16);
    }
}
