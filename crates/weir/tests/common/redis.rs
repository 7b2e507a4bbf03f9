//! A `redis-server` of a test's own: on a free loopback port, in a temporary
//! directory, optionally with an append-only file fsynced on every write, so a
//! test can stop, kill and restart it (the AOF reloaded) under load.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Longest a `redis-server` may take to answer PING after it was started (an
/// AOF being loaded answers `-LOADING` until it is done).
const READY: Duration = Duration::from_secs(20);

/// Longest a `redis-server` may take to exit after SHUTDOWN or SIGKILL.
const EXIT: Duration = Duration::from_secs(10);

/// How to run the Redis.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisOptions {
    /// `--appendonly yes --appendfsync always`: every write is in the AOF, on
    /// disk, before Redis answers it; a restart reloads it. Otherwise no
    /// persistence at all.
    pub aof: bool,
}

/// A running `redis-server`; killed when dropped.
pub struct RedisProcess {
    child: Option<Child>,
    pub port: u16,
    options: RedisOptions,
    dir: tempfile::TempDir,
}

impl RedisProcess {
    /// Starts a `redis-server` on a free port and waits until it answers PING.
    pub async fn start(options: RedisOptions) -> RedisProcess {
        let mut dir = tempfile::tempdir().expect("a temporary directory");
        // The port is free when asked; another process could take it before Redis
        // binds it, so a Redis that exits at once gets another port.
        for _ in 0..5 {
            let port = free_port();
            let mut redis = RedisProcess {
                child: None,
                port,
                options,
                dir,
            };
            if redis.spawn().await {
                return redis;
            }
            dir = redis.take_dir();
        }
        panic!(
            "redis-server did not start on any of 5 free ports; its log:\n{}",
            log(dir.path())
        );
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops Redis as an operator would: SHUTDOWN NOSAVE (no RDB snapshot; with
    /// `aof` every write answered is already in the fsynced AOF).
    pub async fn stop(&mut self) {
        if let Ok(Ok(mut conn)) =
            tokio::time::timeout(EXIT, TcpStream::connect(("127.0.0.1", self.port))).await
        {
            // Redis closes the connection as it exits; no answer comes.
            let _ = conn.write_all(b"SHUTDOWN NOSAVE\r\n").await;
        }
        self.reap(false).await;
    }

    /// Kills Redis with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        self.reap(true).await;
    }

    /// Starts Redis again on the same port and directory (reloading its AOF) and
    /// waits until it answers PING.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a stopped Redis only");
        assert!(
            self.spawn().await,
            "redis-server did not start again on port {}; its log:\n{}",
            self.port,
            log(self.dir.path())
        );
    }

    /// Runs `redis-server` and waits for PING; false if it exited first.
    async fn spawn(&mut self) -> bool {
        let dir = self.dir.path();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--save", ""])
            .args(["--daemonize", "no"]);
        if self.options.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        loop {
            if ping(self.port).await {
                return true;
            }
            let child = self.child.as_mut().unwrap();
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {READY:?}; its log:\n{}",
                self.port,
                log(dir)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the child to exit (after SIGKILL if `kill`), bounded.
    async fn reap(&mut self, kill: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if kill {
            child.start_kill().expect("SIGKILL redis-server");
        }
        match tokio::time::timeout(EXIT, child.wait()).await {
            Ok(status) => {
                status.expect("waiting for redis-server");
            }
            Err(_) => {
                child.start_kill().expect("SIGKILL redis-server");
                child.wait().await.expect("waiting for redis-server");
                panic!(
                    "redis-server on port {} did not exit within {EXIT:?}",
                    self.port
                );
            }
        }
    }

    fn take_dir(self) -> tempfile::TempDir {
        let RedisProcess { dir, mut child, .. } = self;
        if let Some(c) = child.as_mut() {
            let _ = c.start_kill();
        }
        dir
    }
}

/// Sends one command to Redis on `port` and returns the first line of its reply
/// (`+OK`, `$5` for a bulk string, `-ERR …`), for tests of this helper.
pub async fn command(port: u16, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting to Redis");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        conn.read_exact(&mut byte)
            .await
            .expect("a reply from Redis");
        reply.push(byte[0]);
    }
    String::from_utf8_lossy(&reply[..reply.len() - 2]).into_owned()
}

/// Whether Redis on `port` answers PING with PONG now (not `-LOADING`).
pub async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        conn.write_all(b"PING\r\n").await.ok()?;
        let mut answer = [0u8; 7];
        conn.read_exact(&mut answer).await.ok()?;
        Some(&answer == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    listener.local_addr().unwrap().port()
}

/// The end of Redis's log, for a failure message.
fn log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
