//! Shared by the process-level tests: a `weir serve` child on a free port over a
//! fresh data directory, whose address is read from its first stdout line.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Longest a server may take to announce its address.
const ANNOUNCE: Duration = Duration::from_secs(30);

/// A running `weir serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    /// Kept open so the server never writes into a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _dir: tempfile::TempDir,
}

/// Starts `weir serve --listen 127.0.0.1:0` with `extra` flags.
pub async fn start_server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn weir serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(ANNOUNCE, stdout.next_line())
        .await
        .expect("weir serve announces its address")
        .unwrap()
        .expect("a listening line");
    let base = line
        .trim()
        .strip_prefix("weir listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server {
        child,
        _stdout: stdout,
        base,
        _dir: dir,
    }
}
