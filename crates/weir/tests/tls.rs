//! `weir serve --tls-cert --tls-key` through the real binary, and the client side
//! of TLS and API keys in the CLI: `--server https://…` with `--ca-cert`, the
//! error without it, SIGHUP reloading the pair, `weir worker --exec` over TLS (its worker channel on `wss://`),
//! the flags' checks, and the bearer header every client command sends (to a
//! recording stand-in: the server does not check keys yet).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use weir_client::{Client, EnqueueOptions, TaskState};

mod common;
use common::certs::TestCa;
use common::{Options, Server};

/// Longest any single step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(30);
/// How long a reload may take to show, from the SIGHUP.
const RELOAD_BOUND: Duration = Duration::from_secs(5);

/// A CA's server pair and the CA's certificate, written into `dir`.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn write_pair(ca: &TestCa, dir: &Path) -> Files {
    let (cert, key) = ca.server_pair().write(dir);
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    Files {
        cert,
        key,
        ca: ca_path,
    }
}

async fn start_tls(files: &Files, capture_stderr: bool) -> Server {
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let server = common::start_server_with(Options {
        extra: &["--tls-cert", cert, "--tls-key", key],
        capture_stderr,
        ..Options::default()
    })
    .await;
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    server
}

async fn weir(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_SERVER")
        .env_remove("WEIR_CA_CERT")
        .env_remove("WEIR_API_KEY")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run weir")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn client(server: &Server, ca: &TestCa) -> Client {
    Client::builder(&server.base)
        .ca_cert_pem(ca.pem.as_bytes())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_https_with_the_ca_and_fails_clearly_without() {
    let ca = TestCa::new("weir test CA");
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(&ca, dir.path());
    let mut server = start_tls(&files, true).await;
    let mut log = server.stderr.take().unwrap();
    let (base, ca_path) = (server.base.as_str(), files.ca.to_str().unwrap());

    let out = weir(
        &[
            "enqueue",
            "mail",
            "--payload",
            r#"{"n":1}"#,
            "--json",
            "--server",
            base,
            "--ca-cert",
            ca_path,
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "pending");

    // The same through the environment.
    let out = weir(
        &["queues", "--json"],
        &[("WEIR_SERVER", base), ("WEIR_CA_CERT", ca_path)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["queues"][0]["name"], "mail");

    // Without the CA: an error that says the certificate is the problem, one line.
    let out = weir(&["queues", "--server", base], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(
        err.contains("--ca-cert"),
        "the error says what to do: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A CA file that is not one is named.
    let out = weir(
        &[
            "queues",
            "--server",
            base,
            "--ca-cert",
            files.key.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("key.pem") && err.contains("no PEM certificate"),
        "{err}"
    );

    // Plain HTTP on the TLS port: closed (after at most a TLS alert).
    let mut plain = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(STEP, plain.read_to_end(&mut got))
        .await
        .expect("closed")
        .ok();
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");

    // The server still serves, and none of those clients' failures was worth a
    // warning in its log (all it wrote by now, once SIGTERM ends it).
    let c = client(&server, &ca);
    assert_eq!(c.queues().await.unwrap().len(), 1);
    server.signal(libc::SIGTERM);
    let mut lines = Vec::new();
    tokio::time::timeout(STEP, async {
        while let Some(line) = log.next_line().await.unwrap() {
            lines.push(line);
        }
    })
    .await
    .expect("the server exits on SIGTERM");
    let loud: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
    let _ = server.child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_pair_and_keeps_the_old_one_when_the_new_one_is_bad() {
    let (ca_a, ca_b) = (TestCa::new("CA A"), TestCa::new("CA B"));
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(&ca_a, dir.path());
    let mut server = start_tls(&files, true).await;
    let mut log = server.stderr.take().unwrap();
    assert!(client(&server, &ca_a).queues().await.is_ok());

    // Replace the files with pair B, then SIGHUP: new connections of a client
    // that trusts only B succeed within the bound (each try is a new client, so
    // a new connection and handshake).
    ca_b.server_pair().write(dir.path());
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + RELOAD_BOUND;
    loop {
        match client(&server, &ca_b).queues().await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no handshake with pair B within {RELOAD_BOUND:?}: {e:?}"
            ),
        }
        tokio::task::yield_now().await;
    }
    // A new connection trusting only A is refused now.
    assert!(client(&server, &ca_a).queues().await.is_err());

    // A key that does not load: logged, and pair B stays.
    std::fs::write(&files.key, "not a key\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = tokio::time::timeout(STEP, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("not reloaded") {
                return line;
            }
        }
        panic!("the server's log ended")
    })
    .await
    .expect("the failed reload is logged");
    assert!(line.contains("key.pem"), "{line}");
    assert!(client(&server, &ca_b).queues().await.is_ok());
    // The server is alive: SIGHUP did not end it.
    assert!(server.child.try_wait().unwrap().is_none());
    server.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_processes_a_task_over_tls() {
    let ca = TestCa::new("weir test CA");
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(&ca, dir.path());
    // Auth on: a producer key and a worker key, made on the store first.
    let data = dir.path().join("data");
    let make = |role: &'static str| {
        let data = data.to_str().unwrap().to_owned();
        async move {
            let out = weir(
                &[
                    "keys",
                    "create",
                    "--name",
                    role,
                    "--role",
                    role,
                    "--data-dir",
                    &data,
                ],
                &[],
            )
            .await;
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout).trim().to_owned()
        }
    };
    let (producer, worker_key) = (make("producer").await, make("worker").await);
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let mut server = common::start_server_with(Options {
        extra: &["--tls-cert", cert, "--tls-key", key],
        data_dir: Some(&data),
        ..Options::default()
    })
    .await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let c = Client::builder(&server.base)
        .ca_cert_pem(ca.pem.as_bytes())
        .api_key(&producer)
        .build()
        .unwrap();
    // Without a key the server refuses.
    let anonymous = client(&server, &ca);
    assert!(anonymous
        .enqueue("work", &EnqueueOptions::new(json!({})))
        .await
        .is_err());
    let id = c
        .enqueue("work", &EnqueueOptions::new(json!({"n": 7})))
        .await
        .unwrap()
        .id;

    // The command answers its payload, and whether it was handed the worker's
    // API key (it must not be).
    let exec = r#"printf '{"key":"%s","payload":%s}' "${WEIR_API_KEY-unset}" "$(cat)""#;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["worker", "--queue", "work", "--exec", exec])
        .env("WEIR_SERVER", &server.base)
        .env("WEIR_CA_CERT", &files.ca)
        .env("WEIR_API_KEY", &worker_key)
        .env("WEIR_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn weir worker");
    let deadline = Instant::now() + STEP;
    let task = loop {
        let task = c.wait(&id, 10_000).await.unwrap();
        if task.state.is_terminal() {
            break task;
        }
        assert!(Instant::now() < deadline, "not done: {task:?}");
    };
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(
        task.result,
        Some(json!({"key": "unset", "payload": {"n": 7}}))
    );
    // Through the worker channel (`wss://`, the default transport), not HTTP
    // long-polls: the server counts the upgrade, and no lease request.
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let metrics = common::metrics_text(&trusting, &server.base).await;
    let requests = |route: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("weir_http_requests_total{"))
            .filter(|l| l.contains(&format!("route=\"{route}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert!(requests("/v1/workers/connect") >= 1.0, "{metrics}");
    assert_eq!(requests("/v1/queues/{queue}/lease"), 0.0, "{metrics}");
    worker.kill().await.unwrap();
    server.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_flags_are_checked_before_anything_starts() {
    let ca = TestCa::new("weir test CA");
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(&ca, dir.path());
    let data = dir.path().join("data");
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir"];
        args.push(data.to_str().unwrap());
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let refused = |out: Output, needle: &str| {
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        weir(&args, &[]).await
    };
    let cert = files.cert.to_str().unwrap();
    let key = files.key.to_str().unwrap();
    refused(
        run(serve(&["--tls-cert", cert])).await,
        "--tls-cert needs --tls-key",
    );
    refused(
        run(serve(&["--tls-key", key])).await,
        "--tls-key needs --tls-cert",
    );
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    refused(
        run(serve(&["--tls-cert", missing, "--tls-key", key])).await,
        "missing.pem",
    );
    // The key given as the certificate, and the other way round.
    refused(
        run(serve(&["--tls-cert", key, "--tls-key", key])).await,
        "no PEM certificate",
    );
    refused(
        run(serve(&["--tls-cert", cert, "--tls-key", cert])).await,
        "no PEM private key",
    );
    // A key of another certificate.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_key) = ca.server_pair().write(&other);
    refused(
        run(serve(&[
            "--tls-cert",
            cert,
            "--tls-key",
            other_key.to_str().unwrap(),
        ]))
        .await,
        "does not fit",
    );

    let out = weir(&["serve", "--help"], &[]).await;
    let help = text(&out.stdout);
    assert!(
        help.contains("--tls-cert") && help.contains("SIGHUP"),
        "{help}"
    );
}

/// A stand-in server that answers every request `{"queues": []}` and hands the
/// test each request head.
async fn recorder() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let body = r#"{"queues":[]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (base, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_goes_out_as_a_bearer_token_and_is_never_shown() {
    const KEY: &str = "wk_test_0123456789abcdef";
    let (base, mut heads) = recorder().await;
    for (args, env) in [
        (vec!["queues", "--api-key", KEY], vec![]),
        (vec!["queues", "--token", KEY], vec![]),
        (vec!["queues"], vec![("WEIR_API_KEY", KEY)]),
    ] {
        let mut env = env;
        env.push(("WEIR_SERVER", base.as_str()));
        let out = weir(&args, &env).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let head = tokio::time::timeout(STEP, heads.recv())
            .await
            .unwrap()
            .unwrap();
        let auth = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("authorization")
                    .then(|| value.trim())
            })
            .unwrap_or_else(|| panic!("no Authorization header in {head}"));
        assert_eq!(auth, format!("Bearer {KEY}"), "{args:?}");
    }

    // Help shows the flag and the variable's name, never its value; nor does a
    // failed command's error.
    let out = weir(&["queues", "--help"], &[("WEIR_API_KEY", KEY)]).await;
    let help = text(&out.stdout);
    assert!(
        help.contains("--api-key") && help.contains("WEIR_API_KEY"),
        "{help}"
    );
    assert!(!help.contains(KEY), "{help}");
    let out = weir(
        &["queues", "--server", "http://127.0.0.1:1"],
        &[("WEIR_API_KEY", KEY)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out.stderr).contains(KEY), "{}", text(&out.stderr));
    let out = weir(
        &["queues", "--server", "http://127.0.0.1:1"],
        &[("WEIR_API_KEY", "bad\u{1}key")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("API key") && !err.contains("bad"), "{err}");
}
