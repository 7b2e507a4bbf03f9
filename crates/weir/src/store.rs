//! The store `weir serve` runs on, chosen by `--store`: the embedded store in
//! `--data-dir` (the default). The HTTP crate sees only the `Broker` trait; this
//! module is the one place that names a backend.

use std::sync::Arc;

use anyhow::Context;
use weir_core::Limits;
use weir_store::{Broker, EmbeddedBroker, EmbeddedConfig};

use crate::cli::ServeArgs;
use crate::serve::ConfigError;

/// A store and its settings, checked before anything starts.
pub enum StoreConfig {
    /// The embedded store in one directory (single server).
    Embedded(EmbeddedConfig),
}

impl StoreConfig {
    /// The store the flags name, with the settings every store shares.
    pub fn from_args(args: &ServeArgs) -> Result<StoreConfig, ConfigError> {
        let mut backoff = weir_core::Backoff::default();
        if let Some(v) = args.backoff_base_ms {
            backoff.base_ms = v;
        }
        if let Some(v) = args.backoff_cap_ms {
            backoff.cap_ms = v;
        }
        if backoff.base_ms > backoff.cap_ms {
            return Err(ConfigError(format!(
                "--backoff-base-ms ({}) must not exceed --backoff-cap-ms ({})",
                backoff.base_ms, backoff.cap_ms
            )));
        }
        let lease_grace_ms = args
            .lease_grace_ms
            .unwrap_or(weir_core::limits::LEASE_GRACE_MS_DEFAULT);
        let mut c = EmbeddedConfig::new(&args.data_dir);
        c.backoff = backoff;
        c.lease_grace_ms = lease_grace_ms;
        if let Some(v) = args.memtable_bytes_max {
            let min = weir_store::embedded::MEMTABLE_BYTES_MIN;
            if !(min..=(1 << 32)).contains(&v) {
                return Err(ConfigError(format!(
                    "--memtable-bytes-max must be between {min} and {} bytes",
                    1u64 << 32
                )));
            }
            c.memtable_bytes_max = v;
        }
        Ok(StoreConfig::Embedded(c))
    }

    /// Gives the store the server's input limits and its share of open files.
    pub fn set_limits(&mut self, limits: &Limits, files_cached_max: usize) {
        match self {
            StoreConfig::Embedded(c) => {
                c.limits = limits.clone();
                c.files_cached_max = files_cached_max;
            }
        }
    }

    /// Names the store for the log.
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Embedded(c) => format!("embedded:{}", c.data_dir.display()),
        }
    }

    /// Opens (recovers) the store.
    pub async fn open(self) -> anyhow::Result<Arc<dyn Broker>> {
        match self {
            StoreConfig::Embedded(c) => {
                let dir = c.data_dir.clone();
                let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::open(c))
                    .await
                    .context("opening the store")?
                    .with_context(|| format!("opening the store in {}", dir.display()))?;
                Ok(Arc::new(broker))
            }
        }
    }
}
