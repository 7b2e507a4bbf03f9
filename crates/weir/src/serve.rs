//! `weir serve`: turns the flags into a validated `Settings` (the HTTP side's
//! `ServeConfig` and the chosen store), opens the store, binds, announces the
//! address on stdout, and runs the server until SIGINT or SIGTERM. With TLS,
//! SIGHUP reloads the certificate and key (`reload_on_hangup`).

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use weir_server::{IngressLimit, ServeConfig, ServerTls, TlsFiles};

use crate::cli::ServeArgs;
use crate::store::StoreConfig;

/// Everything `weir serve` runs with, checked before anything starts.
pub struct Settings {
    pub listen: SocketAddr,
    /// A public `--listen` without `--insecure-public-bind` or `--require-auth`:
    /// allowed only if the store holds an API key, and then auth stays on.
    pub public_needs_keys: bool,
    pub serve: ServeConfig,
    pub store: StoreConfig,
    /// The open-file limit the connection cap was derived from (logged at start).
    pub files_max: u64,
}

/// The line `weir serve` prints once it listens, followed by its base URL
/// (`http://ADDR`, or `https://ADDR` with TLS); `weir bench --spawn` and tests
/// read it to learn the port chosen for `--listen 127.0.0.1:0`.
pub const LISTENING_PREFIX: &str = "weir listening on ";

/// A configuration problem, reported as one line with exit code 2 before
/// anything starts.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Checks the flags and builds the server's configuration. `files_max` is the
/// process's open-file limit, shared between connections and the store.
pub fn config(args: &ServeArgs, files_max: u64) -> Result<Settings, ConfigError> {
    let public_needs_keys =
        !args.listen.ip().is_loopback() && !args.insecure_public_bind && !args.require_auth;
    let mut config = ServeConfig::new();
    config.require_auth = args.require_auth;
    config.metrics_auth = args.metrics_auth;
    let mut store = StoreConfig::from_args(args)?;
    if let Some(v) = args.retention_ms {
        config.retention_ms = v;
    }
    if let Some(v) = args.payload_bytes_max {
        if v == 0 || v > config.limits.request_bytes_max {
            return Err(ConfigError(format!(
                "--payload-bytes-max must be between 1 and {} (the request size limit)",
                config.limits.request_bytes_max
            )));
        }
        config.limits.payload_bytes_max = v;
    }
    if let Some(v) = args.wait_ms_max {
        let max = config.limits.wait_ms_max;
        if v > max {
            return Err(ConfigError(format!(
                "--wait-ms-max must be between 0 and {max}"
            )));
        }
        config.limits.wait_ms_max = v;
    }
    conn_config(args, files_max, &mut config)?;
    config.ingress = ingress_limit(args)?;
    if let Some(endpoint) = &args.otlp_endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError(format!(
                "--otlp-endpoint {endpoint:?} is not an http:// or https:// URL"
            )));
        }
        config.otlp_endpoint = Some(endpoint.clone());
    }
    config.tls = tls(args)?;
    store.set_limits(&config.limits);
    Ok(Settings {
        listen: args.listen,
        public_needs_keys,
        serve: config,
        store,
        files_max,
    })
}

/// `--tls-cert` and `--tls-key`: both or neither. The pair is read and checked
/// here, so a missing file or a key that does not fit fails before anything
/// starts, naming the file.
fn tls(args: &ServeArgs) -> Result<Option<ServerTls>, ConfigError> {
    let files = match (&args.tls_cert, &args.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        },
        (Some(_), None) => {
            return Err(ConfigError(
                "--tls-cert needs --tls-key (WEIR_TLS_KEY): the certificate's private key".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError(
                "--tls-key needs --tls-cert (WEIR_TLS_CERT): the certificate it belongs to".into(),
            ))
        }
    };
    ServerTls::load(files)
        .map(Some)
        .map_err(|e| ConfigError(format!("--tls-cert/--tls-key: {e}")))
}

/// `--ingress-rate` and `--ingress-burst`; neither is no limit.
fn ingress_limit(args: &ServeArgs) -> Result<Option<IngressLimit>, ConfigError> {
    let Some(rate) = args.ingress_rate else {
        return match args.ingress_burst {
            Some(_) => Err(ConfigError(
                "--ingress-burst needs --ingress-rate (the rate the burst refills at)".into(),
            )),
            None => Ok(None),
        };
    };
    IngressLimit::new(rate.requests, rate.per, args.ingress_burst)
        .map(Some)
        .map_err(|e| ConfigError(format!("--ingress-rate/--ingress-burst: {e}")))
}

/// The connection cap (below the open-file limit, leaving the store its share)
/// and timeouts.
fn conn_config(
    args: &ServeArgs,
    files_max: u64,
    config: &mut ServeConfig,
) -> Result<(), ConfigError> {
    use weir_server::conn::{FileBudget, FILES_MAX_MIN, FILES_OTHER_RESERVED};
    if files_max < FILES_MAX_MIN {
        return Err(ConfigError(format!(
            "the open-file limit is {files_max}; weir serve needs at least {FILES_MAX_MIN} \
             (raise it with `ulimit -n` or LimitNOFILE=)"
        )));
    }
    let budget = FileBudget::for_files_max(files_max);
    config.conn.connections_max = budget.connections_max;
    if let Some(n) = args.connections_max {
        if n == 0 {
            return Err(ConfigError("--connections-max must be at least 1".into()));
        }
        if n > budget.connections_max {
            // The operator's call, but a flood of connections can then take the
            // descriptors the store needs to write.
            tracing::warn!(
                connections_max = n,
                files_max,
                store_files_reserved = budget.store_files_cached_max + FILES_OTHER_RESERVED,
                "--connections-max leaves the store less than its reserve of the open-file limit"
            );
        }
        config.conn.connections_max = n;
    }
    let timeouts = [
        (
            "--header-timeout",
            args.header_timeout,
            &mut config.conn.header_read_timeout_ms,
        ),
        (
            "--idle-timeout",
            args.idle_timeout,
            &mut config.conn.idle_timeout_ms,
        ),
        (
            "--body-timeout",
            args.body_timeout,
            &mut config.conn.body_read_timeout_ms,
        ),
    ];
    for (flag, value, ms) in timeouts {
        if let Some(d) = value {
            let v = crate::duration::as_ms(d);
            if v == 0 {
                return Err(ConfigError(format!("{flag} must be at least 1ms")));
            }
            *ms = v;
        }
    }
    Ok(())
}

/// Raises this process's soft limit on open files to its hard limit (a process
/// may, unprivileged) and returns the soft limit then in force. Connections and
/// the store share it; many systems start services with a soft limit of 1,024
/// and a far higher hard one.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` of ours.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return weir_server::conn::open_files_max();
    }
    if limit.rlim_cur < limit.rlim_max && limit.rlim_max != libc::RLIM_INFINITY {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` of ours.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise the open-file limit");
    }
    limit.rlim_cur
}

/// Runs the server; returns after a graceful shutdown.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let Settings {
        listen,
        public_needs_keys,
        serve: mut config,
        store,
        files_max,
    } = settings;
    disable_transparent_huge_pages();
    // Install the handlers before announcing the address: a supervisor that
    // signals us right after reading the line must get a graceful shutdown, not
    // the default disposition.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    if let Some(tls) = config.tls.clone() {
        let hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        tokio::spawn(reload_on_hangup(hangup, tls));
    }
    let shutdown = async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down");
    };

    let store_name = store.describe();
    let broker = store.open().await?;
    if public_needs_keys {
        // Auth must be on before anyone outside can reach the port; it stays on
        // if every key is revoked later.
        if !broker
            .has_keys()
            .await
            .context("reading the store's API keys")?
        {
            // A configuration error like the flags' (exit 2), found once the
            // store is open.
            broker.close().await.ok();
            return Err(ConfigError(format!(
                "refusing to listen on non-loopback address {listen} without authentication: \
                 the store holds no API key. Make one (`weir keys create --name ops --role admin \
                 --data-dir …` or `--store …`), or pass --require-auth, or \
                 --insecure-public-bind (WEIR_INSECURE_PUBLIC_BIND=1) if you mean it"
            ))
            .into());
        }
        config.require_auth = true;
    }
    let listener =
        weir_server::conn::listen(listen).with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{LISTENING_PREFIX}{scheme}://{local}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    tracing::info!(
        addr = %local,
        store = %store_name,
        open_files_max = files_max,
        connections_max = config.conn.connections_max,
        tls = config.tls.is_some(),
        ingress = %config.ingress.map_or_else(|| "unlimited".to_owned(), |l| l.to_string()),
        "listening"
    );
    weir_server::serve(listener, config, broker, shutdown).await
}

/// On every SIGHUP, reads the TLS certificate and key again from their paths.
/// New connections get a pair that loads; one that does not is logged and the
/// previous pair stays (a certificate half-written by a renewal job must not take
/// the server down; the next SIGHUP tries again). Open connections keep theirs.
/// Installed only with TLS: without it SIGHUP keeps its default (the process
/// ends), as it had before.
async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, tls: ServerTls) {
    while hangup.recv().await.is_some() {
        let files = tls.files().clone();
        let reloading = tls.clone();
        // Reads files: off the runtime's threads.
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(())) => tracing::info!(
                cert = %files.cert.display(),
                key = %files.key.display(),
                "SIGHUP: TLS certificate reloaded; new connections use it"
            ),
            Ok(Err(error)) => tracing::error!(
                %error,
                "SIGHUP: TLS certificate not reloaded; still serving the previous one"
            ),
            Err(error) => tracing::error!(%error, "SIGHUP: the TLS reload panicked"),
        }
    }
}

/// Opts this process out of transparent huge pages. Request buffers and the
/// store's round buffers churn through fresh memory; with THP every first touch of a 2 MiB region made the
/// kernel zero all of it, which profiles showed as 9–20% of server time
/// (`clear_page_erms`). Without THP, end to end was +12% and batched ingest +5%
/// (BENCHMARKS.md). Failure only costs that speed, so it is logged, not fatal.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory
    // of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not disable transparent huge pages");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// An open-file limit for the tests that do not care about it.
    const FILES: u64 = 20_000;

    fn config(args: &ServeArgs) -> Result<Settings, ConfigError> {
        super::config(args, FILES)
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["weir", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn wait_ms_max_lowers_the_long_poll_limit() {
        let s = config(&args(&["--wait-ms-max", "250"])).unwrap();
        assert_eq!(s.serve.limits.wait_ms_max, 250);
        let s = config(&args(&[])).unwrap();
        assert_eq!(s.serve.limits.wait_ms_max, 60_000);
        assert!(config(&args(&["--wait-ms-max", "60001"])).is_err());
    }

    #[test]
    fn a_public_bind_needs_auth_or_the_flag() {
        let needs = |a: &[&str]| config(&args(a)).unwrap().public_needs_keys;
        assert!(needs(&["--listen", "0.0.0.0:7700"]));
        assert!(needs(&["--listen", "[::]:7700"]));
        assert!(!needs(&[
            "--listen",
            "0.0.0.0:7700",
            "--insecure-public-bind"
        ]));
        assert!(!needs(&["--listen", "0.0.0.0:7700", "--require-auth"]));
        assert!(!needs(&["--listen", "[::1]:0"]));
        let c = config(&args(&["--require-auth", "--metrics-auth"]))
            .unwrap()
            .serve;
        assert!(c.require_auth && c.metrics_auth);
        assert!(!config(&args(&[])).unwrap().serve.require_auth);
    }

    #[test]
    fn flags_reach_the_config() {
        let s = config(&args(&[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/d",
            "--lease-grace-ms",
            "7",
            "--backoff-base-ms",
            "10",
            "--backoff-cap-ms",
            "20",
            "--payload-bytes-max",
            "100",
        ]))
        .unwrap();
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.serve.limits.payload_bytes_max, 100);
        let StoreConfig::Embedded(e) = &s.store else {
            panic!("not the embedded store")
        };
        assert_eq!(e.data_dir, std::path::PathBuf::from("/tmp/d"));
        assert_eq!(e.lease_grace_ms, 7);
        assert_eq!((e.backoff.base_ms, e.backoff.cap_ms), (10, 20));
        assert_eq!(e.limits.payload_bytes_max, 100);
    }

    #[test]
    fn connection_flags_reach_the_config() {
        let s = config(&args(&[])).unwrap();
        let c = &s.serve;
        let budget = weir_server::FileBudget::for_files_max(FILES);
        assert_eq!(c.conn.connections_max, budget.connections_max);
        assert!(matches!(&s.store, StoreConfig::Embedded(_)));
        assert_eq!(
            (
                c.conn.header_read_timeout_ms,
                c.conn.idle_timeout_ms,
                c.conn.body_read_timeout_ms
            ),
            (10_000, 120_000, 60_000)
        );
        let c = config(&args(&[
            "--connections-max",
            "7",
            "--header-timeout",
            "500ms",
            "--idle-timeout",
            "2s",
            "--body-timeout",
            "3s",
        ]))
        .unwrap()
        .serve;
        assert_eq!(c.conn.connections_max, 7);
        assert_eq!(
            (
                c.conn.header_read_timeout_ms,
                c.conn.idle_timeout_ms,
                c.conn.body_read_timeout_ms
            ),
            (500, 2_000, 3_000)
        );
        assert!(config(&args(&["--connections-max", "0"])).is_err());
        assert!(config(&args(&["--idle-timeout", "0s"])).is_err());
        assert!(super::config(&args(&[]), 100).is_err());
        let c = super::config(&args(&[]), 1024).unwrap().serve;
        assert_eq!(c.conn.connections_max, 640);
    }

    fn error(extra: &[&str]) -> String {
        match config(&args(extra)) {
            Ok(_) => panic!("{extra:?} was accepted"),
            Err(ConfigError(msg)) => msg,
        }
    }

    #[test]
    fn the_store_flag_chooses_the_backend() {
        for extra in [&[][..], &["--store", "embedded"]] {
            let s = config(&args(extra)).unwrap();
            assert!(matches!(s.store, StoreConfig::Embedded(_)), "{extra:?}");
        }
        let s = config(&args(&[
            "--store",
            "redis://127.0.0.1:6379/2",
            "--lease-grace-ms",
            "7",
            "--backoff-base-ms",
            "10",
            "--backoff-cap-ms",
            "20",
            "--payload-bytes-max",
            "100",
        ]))
        .unwrap();
        let StoreConfig::Redis(r) = &s.store else {
            panic!("not the Redis store")
        };
        assert!(matches!(&r.target, weir_store::RedisTarget::Single(_)));
        assert_eq!(r.prefix, "weir");
        assert_eq!(r.lease_grace_ms, 7);
        assert_eq!((r.backoff.base_ms, r.backoff.cap_ms), (10, 20));
        assert_eq!(r.limits.payload_bytes_max, 100);
        assert_eq!(s.store.describe(), "redis://127.0.0.1:6379/2 prefix=weir");
        let s = config(&args(&[
            "--store",
            "rediss://ada:hunter2@r.example:6380/0",
            "--store-prefix",
            "team-a",
        ]))
        .unwrap();
        let StoreConfig::Redis(r) = &s.store else {
            panic!("not the Redis store")
        };
        assert_eq!(r.prefix, "team-a");
        let shown = s.store.describe();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "rediss://ada:***@r.example:6380/0 prefix=team-a");
        let s = config(&args(&[
            "--store",
            "redis-cluster://10.0.0.1:7000,10.0.0.2:7001",
        ]))
        .unwrap();
        let StoreConfig::Redis(r) = &s.store else {
            panic!("not the Redis store")
        };
        assert!(matches!(&r.target, weir_store::RedisTarget::Cluster(n) if n.len() == 2));
        assert_eq!(
            s.store.describe(),
            "redis-cluster://10.0.0.1:7000,10.0.0.2:7001 prefix=weir"
        );
        let s = config(&args(&[
            "--store",
            "redis-cluster://u:hunter2@10.0.0.1:7000",
        ]))
        .unwrap();
        assert_eq!(
            s.store.describe(),
            "redis-cluster://u:***@10.0.0.1:7000 prefix=weir"
        );
    }

    #[test]
    fn a_bad_store_flag_is_one_line() {
        for bad in [
            "postgres://h/db",
            "redis",
            "",
            "Embedded",
            "http://127.0.0.1:6379",
        ] {
            let msg = error(&["--store", bad]);
            assert!(msg.starts_with("--store"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        let msg = error(&["--store", "memcached://u:hunter2@h:1"]);
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn store_prefix_is_checked() {
        let redis = ["--store", "redis://127.0.0.1:6379"];
        for bad in ["", "a{b}", "}", &"p".repeat(65)] {
            let msg = error(&[&redis[..], &["--store-prefix", bad]].concat());
            assert!(msg.starts_with("--store-prefix"), "{msg}");
        }
        assert!(config(&args(
            &[&redis[..], &["--store-prefix", &"p".repeat(64)]].concat()
        ))
        .is_ok());
        // The prefix names keys in Redis; the embedded store has none.
        let msg = error(&["--store-prefix", "team-a"]);
        assert!(msg.contains("Redis store only"), "{msg}");
    }

    #[test]
    fn segment_size_is_for_the_embedded_store_only() {
        assert!(config(&args(&["--segment-bytes", "8388608"])).is_ok());
        let msg = error(&["--segment-bytes", "1024"]);
        assert!(msg.contains("--segment-bytes must be between"), "{msg}");
        let msg = error(&[
            "--store",
            "redis://127.0.0.1:6379",
            "--segment-bytes",
            "8388608",
        ]);
        assert_eq!(msg, "--segment-bytes applies to the embedded store only");
    }

    #[test]
    fn bad_backoff_is_refused() {
        assert!(config(&args(&["--backoff-base-ms", "10", "--backoff-cap-ms", "5"])).is_err());
    }

    #[test]
    fn ingress_flags_reach_the_config() {
        use std::time::Duration;
        assert_eq!(config(&args(&[])).unwrap().serve.ingress, None);
        let limit = |flags: &[&str]| config(&args(flags)).unwrap().serve.ingress.unwrap();
        let l = limit(&["--ingress-rate", "10000/s", "--ingress-burst", "20000"]);
        assert_eq!(
            (l.requests(), l.per(), l.burst()),
            (10_000, Duration::from_secs(1), 20_000)
        );
        // The burst defaults to one second's worth of the rate.
        assert_eq!(limit(&["--ingress-rate", "10000"]).burst(), 10_000);
        let l = limit(&["--ingress-rate", "5/h"]);
        assert_eq!(
            (l.requests(), l.per(), l.burst()),
            (5, Duration::from_secs(3600), 1)
        );
        assert_eq!(limit(&["--ingress-rate", "600/m"]).burst(), 10);

        let msg = error(&["--ingress-burst", "5"]);
        assert!(
            msg.contains("--ingress-burst needs --ingress-rate"),
            "{msg}"
        );
        let msg = error(&["--ingress-rate", "10/s", "--ingress-burst", "0"]);
        assert!(msg.contains("burst must be at least 1"), "{msg}");
        let msg = error(&["--ingress-rate", "2000000000/s"]);
        assert!(msg.contains("more than one per nanosecond"), "{msg}");
        // A malformed rate is clap's error, naming the flag.
        let e = Cli::try_parse_from(["weir", "serve", "--ingress-rate", "10/d"]).unwrap_err();
        assert!(e.to_string().contains("--ingress-rate"), "{e}");
        assert!(e.to_string().contains("unknown unit `/d`"), "{e}");
    }
}
