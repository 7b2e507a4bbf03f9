//! The store `weir serve` runs on, chosen by `--store`: the embedded store in
//! `--data-dir` (the default), or a Redis that many servers share. The HTTP crate
//! sees only the `Broker` trait; this module is the one place that names a backend.

use std::sync::Arc;

use anyhow::Context;
use weir_core::Limits;
use weir_store::{Broker, EmbeddedBroker, EmbeddedConfig, RedisBroker, RedisConfig, RedisTarget};

use crate::cli::ServeArgs;
use crate::serve::ConfigError;

/// The key prefix of a Redis store when `--store-prefix` is not given.
pub const STORE_PREFIX_DEFAULT: &str = "weir";

/// Longest `--store-prefix`, in bytes: it starts every key the store writes.
pub const STORE_PREFIX_BYTES_MAX: usize = 64;

/// A store and its settings, checked before anything starts.
pub enum StoreConfig {
    /// The embedded store in one directory (single server).
    Embedded(EmbeddedConfig),
    /// A Redis (or Redis Cluster) that many servers share.
    Redis(RedisConfig),
}

/// What `--store` names, before the settings every store shares.
enum Choice {
    Embedded,
    Redis(RedisTarget),
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
        let mut c = StoreConfig::named(
            args.store.as_deref(),
            args.store_prefix.as_deref(),
            &args.data_dir,
        )?;
        let lease_grace_ms = args
            .lease_grace_ms
            .unwrap_or(weir_core::limits::LEASE_GRACE_MS_DEFAULT);
        match &mut c {
            StoreConfig::Embedded(c) => {
                c.backoff = backoff;
                c.lease_grace_ms = lease_grace_ms;
                if let Some(v) = args.segment_bytes {
                    let min = weir_store::embedded::SEGMENT_BYTES_MIN;
                    let max = weir_store::embedded::SEGMENT_BYTES_MAX;
                    if !(min..=max).contains(&v) {
                        return Err(ConfigError(format!(
                            "--segment-bytes must be between {min} and {max} bytes"
                        )));
                    }
                    c.segment_bytes = v;
                }
            }
            StoreConfig::Redis(c) => {
                if args.segment_bytes.is_some() {
                    return Err(ConfigError(
                        "--segment-bytes applies to the embedded store only".into(),
                    ));
                }
                c.backoff = backoff;
                c.lease_grace_ms = lease_grace_ms;
            }
        }
        Ok(c)
    }

    /// The store `--store`, `--store-prefix` and `--data-dir` name, with every
    /// other setting at its default (what `weir keys` opens).
    pub fn named(
        store: Option<&str>,
        prefix: Option<&str>,
        data_dir: &std::path::Path,
    ) -> Result<StoreConfig, ConfigError> {
        match choose(store)? {
            Choice::Embedded => {
                if prefix.is_some() {
                    return Err(ConfigError(
                        "--store-prefix applies to a Redis store only (--store redis://…)".into(),
                    ));
                }
                Ok(StoreConfig::Embedded(EmbeddedConfig::new(data_dir)))
            }
            Choice::Redis(target) => {
                let prefix = prefix.unwrap_or(STORE_PREFIX_DEFAULT).to_owned();
                check_prefix(&prefix)?;
                let mut c = RedisConfig::new(target);
                c.prefix = prefix;
                Ok(StoreConfig::Redis(c))
            }
        }
    }

    /// Gives the store the server's input limits.
    pub fn set_limits(&mut self, limits: &Limits) {
        match self {
            StoreConfig::Embedded(c) => c.limits = limits.clone(),
            StoreConfig::Redis(c) => c.limits = limits.clone(),
        }
    }

    /// Names the store for the log, without any password the URL holds.
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Embedded(c) => format!("embedded:{}", c.data_dir.display()),
            StoreConfig::Redis(c) => {
                let target = match &c.target {
                    RedisTarget::Single(url) => redact(url),
                    RedisTarget::Cluster(nodes) => {
                        // Each seed is a `redis://HOST:PORT` URL of its own.
                        let nodes: Vec<String> = nodes
                            .iter()
                            .map(|n| {
                                let n = redact(n);
                                n.strip_prefix("redis://").map(str::to_owned).unwrap_or(n)
                            })
                            .collect();
                        format!("redis-cluster://{}", nodes.join(","))
                    }
                };
                format!("{target} prefix={}", c.prefix)
            }
        }
    }

    /// Opens (recovers) the store, or connects to it.
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
            StoreConfig::Redis(c) => {
                let name = StoreConfig::Redis(c.clone()).describe();
                let broker = RedisBroker::connect(c)
                    .await
                    .with_context(|| format!("connecting to the store {name}"))?;
                // Settings of that Redis that weaken what a 2xx promises
                // (maxmemory-policy that evicts, no AOF): the operator's call, so
                // a warning, not a refusal.
                for warning in broker.startup_warnings().await {
                    tracing::warn!(store = %name, "{warning}");
                }
                Ok(Arc::new(broker))
            }
        }
    }
}

/// What `--store` names: absent or `embedded` is the embedded store; the Redis
/// schemes go to `RedisTarget::parse`; anything else is refused.
fn choose(store: Option<&str>) -> Result<Choice, ConfigError> {
    let s = match store {
        None | Some("embedded") => return Ok(Choice::Embedded),
        Some(s) => s,
    };
    let shown = redact(s);
    if !["redis://", "rediss://", "redis-cluster://"]
        .iter()
        .any(|scheme| s.starts_with(scheme))
    {
        return Err(ConfigError(format!(
            "--store {shown:?} names no store: use `embedded`, redis://HOST:PORT/DB, \
             rediss://HOST:PORT/DB or redis-cluster://HOST:PORT[,HOST:PORT…]"
        )));
    }
    RedisTarget::parse(s).map(Choice::Redis).map_err(|e| {
        // The parser may quote the URL back: never with its password.
        let e = secrets(s)
            .into_iter()
            .fold(e, |e, secret| e.replace(secret, "***"));
        ConfigError(format!("--store {shown}: {e}"))
    })
}

/// Refuses a key prefix that is empty, too long, or holds a brace: in Redis
/// Cluster `{…}` in a key is its hash tag, which the store places per queue.
fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError("--store-prefix must not be empty".into()));
    }
    if prefix.len() > STORE_PREFIX_BYTES_MAX {
        return Err(ConfigError(format!(
            "--store-prefix is {} bytes; at most {STORE_PREFIX_BYTES_MAX}",
            prefix.len()
        )));
    }
    if prefix.contains(['{', '}']) {
        return Err(ConfigError(
            "--store-prefix must not contain `{` or `}` (Redis Cluster hash tags)".into(),
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Err(ConfigError(
            "--store-prefix must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// The passwords in a store URL: the part after `user:` before the `@` of each
/// comma-separated authority (a cluster lists several nodes).
fn secrets(url: &str) -> Vec<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .split(',')
        .filter_map(|node| node.rsplit_once('@'))
        .filter_map(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty())
        .collect()
}

/// The URL with every password replaced by `***`.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let nodes: Vec<String> = authority
        .split(',')
        .map(|node| match node.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => node.to_owned(),
            },
            None => node.to_owned(),
        })
        .collect();
    let mut out = String::new();
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(&nodes.join(","));
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact("rediss://ada:p%40ss:w@r.example:6380/2?protocol=resp3"),
            "rediss://ada:***@r.example:6380/2?protocol=resp3"
        );
        assert_eq!(
            redact("redis-cluster://u:a@h1:7000,u:b@h2:7001"),
            "redis-cluster://u:***@h1:7000,u:***@h2:7001"
        );
        assert_eq!(redact("redis://ada@h:1/0"), "redis://ada@h:1/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(secrets("redis://:hunter2@h:1/0"), ["hunter2"]);
        assert_eq!(secrets("redis-cluster://u:a@h1:7000,h2:7001"), ["a"]);
        assert!(secrets("redis://h:1/0").is_empty());
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("weir").is_ok());
        assert!(check_prefix("team-a:prod").is_ok());
        assert!(check_prefix(&"p".repeat(STORE_PREFIX_BYTES_MAX)).is_ok());
        assert!(check_prefix(&"p".repeat(STORE_PREFIX_BYTES_MAX + 1)).is_err());
        // 33 two-byte characters: 66 bytes, though 33 characters.
        assert!(check_prefix(&"é".repeat(33)).is_err());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a{b").is_err());
        assert!(check_prefix("a}b").is_err());
        assert!(check_prefix("a\nb").is_err());
    }
}
