//! The server the integration tests start: `weir_server::serve` on a free
//! loopback port over the store `WEIR_TEST_STORE` names, with the store's limits
//! those of the server's config.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod certs;

use std::net::SocketAddr;

use serde_json::Value;
use weir_server::ServeConfig;
use weir_store::testing::{TestStore, TestStoreConfig};

pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://ADDR`, or `https://ADDR` when the config has TLS.
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _store: TestStore,
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(weir_server::serve(
            listener,
            config,
            store.broker.clone(),
            async move {
                let _ = rx.await;
            },
        ));
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
