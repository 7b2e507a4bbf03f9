//! The server the integration tests start: `weir_server::serve` on a free
//! loopback port over the store `WEIR_TEST_STORE` names, with the store's limits
//! those of the server's config.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod certs;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tower::ServiceExt;

use serde_json::Value;
use weir_server::ServeConfig;
use weir_store::testing::{TestStore, TestStoreConfig};

pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://ADDR`, or `https://ADDR` when the config has TLS.
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _store: std::sync::Arc<TestStore>,
}

impl TestServer {
    /// A server with the default config changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let mut config = ServeConfig::new();
        tweak(&mut config);
        let store = TestStore::open(TestStoreConfig {
            limits: config.limits.clone(),
            ..Default::default()
        })
        .await;
        let broker = store.broker.clone();
        TestServer::serve(config, broker, std::sync::Arc::new(store)).await
    }

    /// `n` servers on one store, as a deployment's servers share one Redis (on
    /// the embedded store, which one server owns, its broker served `n` times:
    /// stop none of them, or only the last).
    pub async fn peers(n: usize) -> Vec<TestServer> {
        let store = std::sync::Arc::new(TestStore::open(TestStoreConfig::default()).await);
        let mut servers = Vec::new();
        for broker in store.peers(n).await {
            servers.push(TestServer::serve(ServeConfig::new(), broker, store.clone()).await);
        }
        servers
    }

    async fn serve(
        config: ServeConfig,
        broker: std::sync::Arc<dyn weir_store::Broker>,
        store: std::sync::Arc<TestStore>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(weir_server::serve(listener, config, broker, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            base: format!("{scheme}://{addr}"),
            stop: Some(tx),
            done: Some(done),
            _store: store,
        }
    }

    /// Shuts the server down and waits for it to end cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap().unwrap();
    }
}

/// POSTs `body` as JSON to `url`; the answer must be a success, its JSON is returned.
pub async fn post_json(c: &reqwest::Client, url: String, body: Value) -> Value {
    let res = c.post(url).json(&body).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.unwrap()
}

/// GETs `url` and returns the answer's JSON, whatever its status.
pub async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// The methods an operation can have in OpenAPI (HEAD aside: axum serves it for
/// every GET route, and the document leaves it implied).
pub const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "patch", "trace"];

/// The router's path templates, read from its `Debug` text (axum has no other
/// way to list them): the `path_router` part, whose `Node` lists
/// `RouteId(n): "/path"`. The fallback router's own paths are left out.
pub fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let text = format!("{router:?}");
    let start = text
        .find("path_router")
        .expect("axum's Router Debug names path_router");
    let end = text.find("fallback_router").expect("and fallback_router");
    let mut paths = BTreeSet::new();
    let mut rest = &text[start..end];
    while let Some(i) = rest.find("RouteId(") {
        rest = &rest[i + "RouteId(".len()..];
        // `RouteId(7): "/path"` in the node; `RouteId(7): MethodRouter…` in the
        // route map, which is skipped.
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Some(tail) = rest[digits..].strip_prefix("): \"") {
            let k = tail.find('"').expect("a closing quote");
            paths.insert(tail[..k].to_owned());
        }
    }
    paths
}

/// The methods the router serves at `path` (a template): a request with a
/// method no route takes is answered 405 with `Allow` listing the others.
pub async fn router_methods(router: &axum::Router, path: &str) -> BTreeSet<String> {
    // A wildcard or parameter segment: any value reaches the same route.
    let concrete: String = path
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/");
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::from_bytes(b"PROBE").unwrap())
                .uri(&concrete)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "{concrete} (for {path}) should answer an unknown method 405"
    );
    let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
    allow
        .split(',')
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| m != "head" && !m.is_empty())
        .collect()
}

/// Raises this process's soft open-file limit to its hard limit; returns it.
pub fn raise_open_files_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one `rlimit` of ours.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}
