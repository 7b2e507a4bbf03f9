//! `weir keys create|list|revoke`: on the store itself (`--data-dir` or
//! `--store`: how the first admin key is made, before any key can authenticate a
//! request), or through a server with an admin key (`--server`, `WEIR_API_KEY`).
//! A new key's text is printed once, on stdout, and nowhere else.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use weir_server::auth::key::{KeySpec, Role};
use weir_server::keys::KeyJson;
use weir_store::Broker;

use crate::cli::{KeysAccess, KeysCommand, KeysCreateArgs};
use crate::store::StoreConfig;

pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Create(args) => create(args).await,
        KeysCommand::List(access) => list(access).await,
        KeysCommand::Revoke { id, access } => revoke(&id, access).await,
    }
}

/// The store `--data-dir`/`--store` name, opened; `None` to go through a server.
async fn direct(access: &KeysAccess) -> anyhow::Result<Option<Arc<dyn Broker>>> {
    if access.data_dir.is_none() && access.store.is_none() {
        return Ok(None);
    }
    let dir = access
        .data_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("./weir-data"));
    let config = StoreConfig::named(
        access.store.as_deref(),
        access.store_prefix.as_deref(),
        &dir,
    )
    .map_err(|e| anyhow::anyhow!(e.0))?;
    let name = config.describe();
    let broker = config
        .open()
        .await
        .with_context(|| format!("opening {name} (an embedded store's server must be stopped)"))?;
    // The input checks every server applies (a key id's form, a record's size).
    Ok(Some(Arc::new(weir_store::Checked::shared(
        broker,
        weir_core::Limits::default(),
    ))))
}

/// Closes a store opened by `direct`, so what was written is flushed.
async fn close(broker: Arc<dyn Broker>) -> anyhow::Result<()> {
    broker.close().await.context("closing the store")
}

async fn create(args: KeysCreateArgs) -> anyhow::Result<ExitCode> {
    let mut roles = Vec::new();
    for r in &args.roles {
        match Role::parse(r) {
            Some(role) => roles.push(role),
            None => bail!("--role {r:?} is not a role: producer, worker, reader or admin"),
        }
    }
    let queues = (!args.queues.is_empty()).then(|| args.queues.clone());
    let now = weir_store::Clock::now_ms(&weir_store::SystemClock);
    let expires_at_ms = match &args.expires {
        None => None,
        Some(text) => Some(match weir_server::wire::parse_rfc3339(text) {
            Some(ms) => u64::try_from(ms).context("--expires is before 1970")?,
            None => {
                let d = crate::duration::parse_duration(text).map_err(|e| {
                    anyhow::anyhow!("--expires {text:?}: not an RFC 3339 time, and {e}")
                })?;
                now + d.as_millis() as u64
            }
        }),
    };
    let json = args.access.client.json;
    let (id, key, view) = match direct(&args.access).await? {
        Some(broker) => {
            let spec = KeySpec {
                name: args.name.clone(),
                roles,
                queues,
                expires_at_ms,
            };
            let made = weir_server::keys::create(broker.as_ref(), spec).await;
            close(broker).await?;
            let made = made.map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            let view = serde_json::to_value(&made.view)?;
            (made.view.id, made.key, view)
        }
        None => {
            let client = crate::commands::client(&args.access.client)?;
            let spec = weir_client::KeySpec {
                name: args.name.clone(),
                roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
                queues,
                expires_at: expires_at_ms.map(weir_server::wire::rfc3339),
            };
            let made = client.create_key(&spec).await?;
            let view = serde_json::to_value(&made.view)?;
            (made.view.id, made.key, view)
        }
    };
    if json {
        let mut v = view;
        v["key"] = key.into();
        println!("{v}");
    } else {
        println!("{key}");
        eprintln!(
            "API key {id} ({}) made; the line above is its text, shown only this once. \
             Send it as `Authorization: Bearer <key>` (WEIR_API_KEY for weir's commands).",
            args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per key for `weir keys list`.
fn line(k: &serde_json::Value) -> String {
    let s = |f: &str| k[f].as_str().unwrap_or("-").to_owned();
    let list = |f: &str| match k[f].as_array() {
        Some(a) => a
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(","),
        None => "*".to_owned(),
    };
    format!(
        "{}  {:<20}  roles={}  queues={}  expires={}  last_used={}",
        s("id"),
        s("name"),
        list("roles"),
        list("queues"),
        s("expires_at"),
        s("last_used_at")
    )
}

async fn list(access: KeysAccess) -> anyhow::Result<ExitCode> {
    let keys: Vec<serde_json::Value> = match direct(&access).await? {
        Some(broker) => {
            let keys = weir_server::keys::list(broker.as_ref()).await;
            close(broker).await?;
            let keys: Vec<KeyJson> = keys.map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            keys.iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?
        }
        None => {
            let client = crate::commands::client(&access.client)?;
            let keys = client.keys().await?;
            keys.iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?
        }
    };
    if access.client.json {
        println!("{}", serde_json::json!({ "keys": keys }));
    } else if keys.is_empty() {
        println!("no API keys (auth is off unless the server runs with --require-auth)");
    } else {
        for k in &keys {
            println!("{}", line(k));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(id: &str, access: KeysAccess) -> anyhow::Result<ExitCode> {
    match direct(&access).await? {
        Some(broker) => {
            let found = broker.delete_key(id).await;
            close(broker).await?;
            if !found? {
                bail!("no API key with id {id}");
            }
        }
        None => {
            let client = crate::commands::client(&access.client)?;
            client.revoke_key(id).await?;
        }
    }
    if !access.client.json {
        println!("API key {id} revoked");
    }
    Ok(ExitCode::SUCCESS)
}
