//! Stores for tests in other crates: one function opens the store a test run
//! asks for, so the HTTP and worker tests run unchanged against every backend.
//! `WEIR_TEST_STORE` picks it: unset or `embedded` opens an embedded store in a
//! fresh temporary directory.
//!
//! May not: be used outside tests (it panics on errors).

use std::sync::Arc;

use weir_core::{Backoff, Limits};

use crate::{Broker, EmbeddedBroker, EmbeddedConfig};

/// The settings a test gives its store.
#[derive(Clone, Debug)]
pub struct TestStoreConfig {
    pub limits: Limits,
    pub backoff: Backoff,
    pub lease_grace_ms: u64,
}

impl Default for TestStoreConfig {
    /// Quick retries and no lease grace, so that expiries and retries happen
    /// within a test's wait.
    fn default() -> TestStoreConfig {
        TestStoreConfig {
            limits: Limits::default(),
            backoff: Backoff {
                base_ms: 2,
                cap_ms: 4,
            },
            lease_grace_ms: 0,
        }
    }
}

/// An open store and whatever must outlive it (its directory).
pub struct TestStore {
    pub broker: Arc<dyn Broker>,
    /// What backs the store, for messages: `embedded:DIR`.
    pub name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// Opens the store `WEIR_TEST_STORE` names, fresh and empty.
    pub async fn open(config: TestStoreConfig) -> TestStore {
        let which = std::env::var("WEIR_TEST_STORE").unwrap_or_default();
        match which.as_str() {
            "" | "embedded" => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let mut c = EmbeddedConfig::new(dir.path());
                c.limits = config.limits;
                c.backoff = config.backoff;
                c.lease_grace_ms = config.lease_grace_ms;
                c.cache_bytes = 4 * 1024 * 1024;
                let broker = EmbeddedBroker::open(c).expect("opening the embedded store");
                TestStore {
                    broker: Arc::new(broker),
                    name: format!("embedded:{}", dir.path().display()),
                    _dir: Some(dir),
                }
            }
            other => panic!("WEIR_TEST_STORE={other:?} names no store (embedded)"),
        }
    }
}
