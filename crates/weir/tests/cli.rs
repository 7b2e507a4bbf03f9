//! The client commands of the `weir` binary against a real server: enqueue, task
//! get / wait / cancel, queues, with their exit codes and `--json` output.

use std::process::Output;

use serde_json::Value;

mod common;

async fn weir(server: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_SERVER", server)
        .output()
        .await
        .expect("run weir")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_get_wait_cancel_and_queues() {
    let mut server = common::start_server(&[]).await;
    let s = server.base.clone();

    let out = weir(
        &s,
        &[
            "enqueue",
            "mail",
            "--payload",
            r#"{"to":"a@b"}"#,
            "--kind",
            "email.send",
            "--priority",
            "3",
            "--json",
        ],
    )
    .await;
    let v = json(&out);
    assert_eq!(v["state"], "pending");
    let id = v["id"].as_str().unwrap().to_owned();

    let v = json(&weir(&s, &["task", "get", &id, "--json"]).await);
    assert_eq!(v["kind"], "email.send");
    assert_eq!(v["payload"]["to"], "a@b");
    assert_eq!(v["priority"], 3);

    // Not terminal within the timeout: exit 3.
    let out = weir(&s, &["task", "wait", &id, "--timeout", "20ms"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Canceled: `task wait` reports it with exit 4, distinct from an error (1).
    let v = json(&weir(&s, &["task", "cancel", &id, "--json"]).await);
    assert_eq!(v["state"], "canceled");
    let out = weir(&s, &["task", "wait", &id, "--timeout", "5s"]).await;
    assert_eq!(out.status.code(), Some(4));
    let out = weir(&s, &["task", "cancel", &id]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "canceling a terminal task is an error"
    );

    // An unknown task is an error with a clear message.
    let out = weir(&s, &["task", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());

    let v = json(&weir(&s, &["queues", "--json"]).await);
    let q = &v["queues"][0];
    assert_eq!(q["name"], "mail");
    assert_eq!(q["counts"]["canceled"], 1);

    // Bad input is refused before anything is sent.
    let out = weir(&s, &["enqueue", "mail", "--payload", "{not json"]).await;
    assert_ne!(out.status.code(), Some(0));
    let v = json(&weir(&s, &["queues", "--json"]).await);
    assert_eq!(v["queues"][0]["counts"]["pending"], 0);

    server.child.kill().await.unwrap();
}

/// A stand-in server that answers every request `200` with `body`: a task view no
/// typed decode takes, which a real server no longer stores but one that ran
/// before its checks may still hold.
async fn fake_server(body: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                // GET and POST /cancel carry no body: the head is the request.
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// Issue 6: `weir task get` shows a task it cannot decode as the server's JSON,
/// in both modes, rather than failing; `task wait` still reads its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_task_is_shown_raw() {
    let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"id":"{id}","queue":"poison","kind":"k","state":"dead","attempt":5,"max_attempts":5,"payload":{deep},"result":null,"last_error":"\ud800 lease expired without ack"}}"#
    );
    let s = fake_server(body.clone()).await;

    let out = weir(&s, &["task", "get", id]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), body);
    assert!(stderr.contains("cannot be decoded"), "{stderr}");

    let out = weir(&s, &["task", "get", id, "--json"]).await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), body);

    // Dead: exit 4, as for a task that decodes.
    let out = weir(&s, &["task", "wait", id, "--timeout", "5s"]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), body);
}
