//! Stores for tests in other crates: one function opens the store a test run
//! asks for, so the HTTP and worker tests run unchanged against every backend.
//! `WEIR_TEST_STORE` picks it: unset or `embedded` opens an embedded store in a
//! fresh temporary directory; a Redis URL (`redis://127.0.0.1:6379`, `rediss://…`,
//! `redis-cluster://…`) opens a Redis store under a fresh random key prefix
//! (`weirtest-<16 hex digits>`), so every test has a store of its own on one Redis.
//! A Redis that does not answer is a panic, never a skip.
//!
//! May not: be used outside tests (it panics on errors).

use std::sync::Arc;

use weir_core::{Backoff, Limits};

use crate::{Broker, EmbeddedBroker, EmbeddedConfig, RedisBroker, RedisConfig, RedisTarget};

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
    /// What backs the store, for messages: `embedded:DIR` or `URL prefix=P`.
    pub name: String,
    _dir: Option<tempfile::TempDir>,
    /// An embedded store's config, for `reopen`.
    embedded: Option<EmbeddedConfig>,
    /// A Redis store's config, for `peers` and `reopen`.
    redis: Option<RedisConfig>,
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
                c.segment_bytes = crate::embedded::SEGMENT_BYTES_MIN;
                let broker = EmbeddedBroker::open(c.clone()).expect("opening the embedded store");
                TestStore {
                    broker: Arc::new(broker),
                    name: format!("embedded:{}", dir.path().display()),
                    _dir: Some(dir),
                    embedded: Some(c),
                    redis: None,
                }
            }
            url if is_redis_url(url) => {
                let target = RedisTarget::parse(url)
                    .unwrap_or_else(|e| panic!("WEIR_TEST_STORE={url:?}: {e}"));
                let prefix = fresh_prefix();
                let mut c = RedisConfig::new(target);
                c.prefix = prefix.clone();
                c.limits = config.limits;
                c.backoff = config.backoff;
                c.lease_grace_ms = config.lease_grace_ms;
                let name = format!("{url} prefix={prefix}");
                let broker = RedisBroker::connect(c.clone()).await.unwrap_or_else(|e| {
                    panic!("WEIR_TEST_STORE: cannot open the Redis store {name}: {e} (is Redis running there?)")
                });
                // A store may connect lazily: one round trip proves Redis answers,
                // so that a test fails here, plainly, and not later on a 503.
                if let Err(e) = broker.queues().await {
                    panic!("WEIR_TEST_STORE: the Redis store {name} does not answer: {e} (is Redis running there?)");
                }
                TestStore {
                    broker: Arc::new(broker),
                    name,
                    _dir: None,
                    embedded: None,
                    redis: Some(c),
                }
            }
            other => panic!(
                "WEIR_TEST_STORE={other:?} names no store (embedded, redis://HOST:PORT, \
                 rediss://HOST:PORT or redis-cluster://HOST:PORT,…)"
            ),
        }
    }
}

impl TestStore {
    /// Restarts the store as a server restart would: closes it (everything
    /// acknowledged is durable by then) and opens it again from what it keeps (the
    /// embedded store's directory; the Redis store's keys, over a new connection).
    /// Panics if anything else still holds the broker.
    pub async fn reopen(self) -> TestStore {
        let TestStore {
            broker,
            name,
            _dir,
            embedded,
            redis,
        } = self;
        broker.close().await.expect("closing the store");
        assert_eq!(
            Arc::strong_count(&broker),
            1,
            "the store is still held elsewhere; stop its servers first"
        );
        drop(broker);
        let broker: Arc<dyn Broker> = match (&embedded, &redis) {
            (Some(c), _) => {
                Arc::new(EmbeddedBroker::open(c.clone()).expect("reopening the embedded store"))
            }
            (_, Some(c)) => Arc::new(
                RedisBroker::connect(c.clone())
                    .await
                    .unwrap_or_else(|e| panic!("reconnecting to {name}: {e}")),
            ),
            (None, None) => unreachable!("a test store is embedded or Redis"),
        };
        TestStore {
            broker,
            name,
            _dir,
            embedded,
            redis,
        }
    }

    /// `n` brokers on this store, as `n` servers would hold it: on Redis, new
    /// connections under the same prefix; on the embedded store (one server per
    /// directory), this one store `n` times.
    pub async fn peers(&self, n: usize) -> Vec<Arc<dyn Broker>> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(match &self.redis {
                None => self.broker.clone(),
                Some(c) => Arc::new(
                    RedisBroker::connect(c.clone())
                        .await
                        .unwrap_or_else(|e| panic!("another broker on {}: {e}", self.name)),
                ) as Arc<dyn Broker>,
            });
        }
        out
    }
}

/// Whether `WEIR_TEST_STORE` names a Redis store.
fn is_redis_url(s: &str) -> bool {
    ["redis://", "rediss://", "redis-cluster://"]
        .iter()
        .any(|scheme| s.starts_with(scheme))
}

/// A key prefix no other test (nor another run) uses: 64 random bits.
pub fn fresh_prefix() -> String {
    format!("weirtest-{:016x}", rand::random::<u64>())
}
