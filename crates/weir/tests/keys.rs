//! API keys through the `weir` binary: the first admin key made offline on a
//! stopped server's data directory; a public `--listen` refused without a key
//! and served with one (auth on); `weir keys create|list|revoke` through the
//! server with that key; and no secret in any output or log line.

use std::process::Output;

mod common;

async fn weir(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_API_KEY")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run weir")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The secret part of a key `weir_<id>_<secret>`.
fn secret(key: &str) -> &str {
    key.rsplit('_').next().unwrap()
}

#[tokio::test]
async fn keys_made_offline_turn_auth_on_and_no_secret_is_ever_shown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();

    // A public bind over a store without keys is refused, naming the ways out.
    let out = weir(&["serve", "--listen", "0.0.0.0:0", "--data-dir", data], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("holds no API key") && err.contains("weir keys create"),
        "{err}"
    );

    // The first admin key, made on the store itself.
    let out = weir(
        &[
            "keys",
            "create",
            "--name",
            "ops",
            "--role",
            "admin",
            "--data-dir",
            data,
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let admin = text(&out.stdout).trim().to_owned();
    assert!(admin.starts_with("weir_") && admin.len() == 86, "{admin}");
    assert!(!text(&out.stderr).contains(secret(&admin)));

    // Now the public bind is served, with auth on.
    let mut server = common::start_server_with(common::Options {
        data_dir: Some(dir.path()),
        listen: Some("0.0.0.0:0"),
        log: Some("info"),
        capture_stderr: true,
        ..common::Options::default()
    })
    .await;
    let base = server.base.clone();
    let srv = [("WEIR_SERVER", base.as_str())];
    let as_admin = [
        ("WEIR_SERVER", base.as_str()),
        ("WEIR_API_KEY", admin.as_str()),
    ];

    let out = weir(&["queues"], &srv).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("401")
            || text(&out.stderr).to_lowercase().contains("unauthorized"),
        "{}",
        text(&out.stderr)
    );

    let out = weir(
        &[
            "keys",
            "create",
            "--name",
            "mailer",
            "--role",
            "producer,worker",
            "--queue",
            "emails*",
            "--json",
        ],
        &as_admin,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mailer = made["key"].as_str().unwrap().to_owned();
    let mailer_id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(made["roles"], serde_json::json!(["producer", "worker"]));

    let as_mailer = [
        ("WEIR_SERVER", base.as_str()),
        ("WEIR_API_KEY", mailer.as_str()),
    ];
    let out = weir(&["enqueue", "emails"], &as_mailer).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = weir(&["enqueue", "sms"], &as_mailer).await;
    assert!(!out.status.success());
    // A wrong secret for a real id.
    let wrong = format!(
        "{}{}",
        &mailer[..mailer.len() - 1],
        if mailer.ends_with('0') { '1' } else { '0' }
    );
    let out = weir(
        &["queues"],
        &[
            ("WEIR_SERVER", base.as_str()),
            ("WEIR_API_KEY", wrong.as_str()),
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(!text(&out.stderr).contains(secret(&wrong)));

    let out = weir(&["keys", "list"], &as_admin).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed.contains(&mailer_id) && listed.contains("mailer") && listed.contains("ops"),
        "{listed}"
    );
    assert!(!listed.contains(secret(&mailer)) && !listed.contains(secret(&admin)));

    let out = weir(&["keys", "revoke", &mailer_id], &as_admin).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = weir(&["enqueue", "emails"], &as_mailer).await;
    assert!(!out.status.success(), "a revoked key enqueued");

    // The server's log names refusals by key id, never a secret.
    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
    let mut lines = server.stderr.take().unwrap();
    let mut log = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(
        log.contains("request refused") && log.contains(&mailer_id),
        "{log}"
    );
    for key in [&admin, &mailer, &wrong] {
        assert!(!log.contains(secret(key)), "a secret in the log:\n{log}");
    }
}
