//! Shared by the process-level tests: a `weir serve` child on a free port over a
//! fresh data directory (or on the Redis `WEIR_TEST_STORE` names, under a fresh
//! key prefix), whose address is read from its first stdout line; and
//! `redis::RedisProcess`, a `redis-server` of a test's own.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

/// The test CA and certificates, shared with weir-server's tests.
#[path = "../../../weir-server/tests/common/certs.rs"]
pub mod certs;
pub mod redis;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// Longest a server may take to announce its address.
const ANNOUNCE: Duration = Duration::from_secs(30);

/// A running `weir serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    /// Kept open so the server never writes into a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    /// `http://127.0.0.1:PORT` (`https://` with `--tls-cert`).
    pub base: String,
    /// The server's log lines, if `Options::capture_stderr` asked for them.
    pub stderr: Option<Lines<BufReader<ChildStderr>>>,
    /// The data directory, when the server made its own.
    _dir: Option<tempfile::TempDir>,
    /// `URL prefix=P` when the server runs on a Redis store.
    pub store: Option<String>,
}

impl Server {
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        let (_scheme, addr) = self.base.split_once("://").unwrap();
        addr
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("the server is running") as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
}

/// How to start a server, beyond `start_server`'s defaults.
#[derive(Default)]
pub struct Options<'a> {
    /// A command that runs the server, e.g. `["prlimit", "--nofile=512:512"]`.
    pub wrapper: &'a [&'a str],
    /// Flags after `serve --listen 127.0.0.1:0 --data-dir DIR`.
    pub extra: &'a [&'a str],
    /// `WEIR_LOG` [default: `warn`].
    pub log: Option<&'a str>,
    /// Pipe stderr into `Server::stderr` instead of inheriting it.
    pub capture_stderr: bool,
    /// The data directory [default: a fresh one, removed with the server]; a
    /// given one outlives the server, for restarts.
    pub data_dir: Option<&'a std::path::Path>,
    /// More environment variables for the server.
    pub env: &'a [(&'a str, &'a std::ffi::OsStr)],
    /// `--store URL` [default: the embedded store in the data directory, or the
    /// Redis `WEIR_TEST_STORE` names when the options leave the store open: no
    /// `data_dir`, no `env`, no embedded-only flag].
    pub store: Option<&'a str>,
    /// `--store-prefix P` with a Redis store [default: a fresh one, so servers
    /// share a store only when given the same prefix].
    pub store_prefix: Option<&'a str>,
    /// `--listen` [default: `127.0.0.1:0`]; the server is reached on loopback
    /// whatever address it binds.
    pub listen: Option<&'a str>,
}

/// A key prefix no other server of this run uses.
/// POSTs `body` as JSON; the answer's JSON, whatever its status.
pub async fn post_json(
    http: &reqwest::Client,
    url: String,
    body: &serde_json::Value,
) -> serde_json::Value {
    http.post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The text of `GET {base}/metrics`.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn fresh_prefix() -> String {
    format!("weirtest-{:016x}", rand_u64())
}

/// 64 bits that differ between calls and processes, without a `rand` dependency.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The store the options give the server: `(URL, prefix)` for Redis.
fn store_of(options: &Options<'_>) -> Option<(String, String)> {
    let prefix = || {
        options
            .store_prefix
            .map_or_else(fresh_prefix, str::to_owned)
    };
    if let Some(url) = options.store {
        return (url != "embedded").then(|| (url.to_owned(), prefix()));
    }
    let tied_to_embedded = options.data_dir.is_some()
        || !options.env.is_empty()
        || options.extra.contains(&"--segment-bytes");
    match std::env::var("WEIR_TEST_STORE") {
        Ok(url) if !url.is_empty() && url != "embedded" && !tied_to_embedded => {
            Some((url, prefix()))
        }
        _ => None,
    }
}

/// Starts `weir serve --listen 127.0.0.1:0` with `extra` flags.
pub async fn start_server(extra: &[&str]) -> Server {
    start_server_with(Options {
        extra,
        ..Options::default()
    })
    .await
}

/// Starts `weir serve --listen 127.0.0.1:0` as `options` say.
pub async fn start_server_with(options: Options<'_>) -> Server {
    let dir = match options.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().unwrap()),
    };
    let data_dir = match (&dir, options.data_dir) {
        (Some(d), _) => d.path().to_owned(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => unreachable!(),
    };
    let store = store_of(&options);
    let bin = env!("CARGO_BIN_EXE_weir");
    let mut command = match options.wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = command
        .args([
            "serve",
            "--listen",
            options.listen.unwrap_or("127.0.0.1:0"),
            "--data-dir",
        ])
        .arg(&data_dir)
        .args(
            store
                .iter()
                .flat_map(|(url, prefix)| ["--store", url, "--store-prefix", prefix]),
        )
        .args(options.extra)
        .env("WEIR_LOG", options.log.unwrap_or("warn"))
        .envs(options.env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(if options.capture_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("spawn weir serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr = child.stderr.take().map(|e| BufReader::new(e).lines());
    let line = tokio::time::timeout(ANNOUNCE, stdout.next_line())
        .await
        .expect("weir serve announces its address")
        .unwrap()
        .expect("a listening line");
    let (scheme, bound) = line
        .trim()
        .strip_prefix("weir listening on ")
        .and_then(|url| url.split_once("://"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let bound: std::net::SocketAddr = bound.parse().unwrap();
    let base = format!("{scheme}://127.0.0.1:{}", bound.port());
    Server {
        child,
        _stdout: stdout,
        base,
        stderr,
        _dir: dir,
        store: store.map(|(url, prefix)| format!("{url} prefix={prefix}")),
    }
}
