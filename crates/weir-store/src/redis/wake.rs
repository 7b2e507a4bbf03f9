//! Wake-ups across servers. Every script that makes a parked call's answer
//! change PUBLISHes one message on `<prefix>:wake` listing tokens: `q<hex name>`
//! (a queue got leasable work), `t<id>` (a task ended or had a cancel requested),
//! `g<id>` (a group ended). Each broker holds one subscriber that fans tokens out
//! to local waiters (one `Notify` per token, removed when its last waiter leaves).
//!
//! Pub/sub loses messages while the subscriber reconnects, so every waiter also
//! re-checks on its own every `RECHECK_MS_MIN..RECHECK_MS_MAX`, and after each
//! (re)subscribe every waiter is woken to re-check at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Shortest and longest pause between a parked waiter's own re-checks.
pub const RECHECK_MS_MIN: u64 = 1000;
pub const RECHECK_MS_MAX: u64 = 2000;
/// Pause before the subscriber reconnects after losing its connection.
const RESUBSCRIBE_MS: u64 = 200;

/// Local waiters by token.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

/// One waiter's registration; dropping it leaves.
pub struct Waiter {
    waiters: Arc<Waiters>,
    token: String,
    pub notify: Arc<Notify>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&self.token) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.token);
            }
        }
    }
}

impl Waiters {
    pub fn register(self: &Arc<Self>, token: String) -> Waiter {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(token.clone())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        let notify = entry.0.clone();
        drop(map);
        Waiter {
            waiters: self.clone(),
            token,
            notify,
        }
    }

    /// Wakes the waiters of each token in a message.
    pub fn deliver(&self, message: &str) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for token in message.split(' ') {
            if let Some((n, _)) = map.get(token) {
                n.notify_waiters();
            }
        }
    }

    /// Wakes every waiter (after a resubscribe, and at shutdown).
    pub fn wake_all(&self) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for (n, _) in map.values() {
            n.notify_waiters();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A pause before a parked waiter re-checks by itself, with jitter so that
/// many waiters do not re-check together.
pub fn recheck() -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(RECHECK_MS_MIN..=RECHECK_MS_MAX))
}

/// The subscriber: connects to one of `urls` (for a cluster, any node: PUBLISH
/// reaches every node), subscribes, delivers messages, and on any loss
/// reconnects, trying the next url.
pub async fn subscribe(
    urls: Vec<String>,
    channel: String,
    waiters: Arc<Waiters>,
    closing: CancellationToken,
    ready: Arc<Notify>,
) {
    let mut i = 0usize;
    loop {
        let url = &urls[i % urls.len()];
        i += 1;
        let connected = async {
            let client = redis::Client::open(url.as_str())?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(3), connected) => r,
            _ = closing.cancelled() => return,
        };
        match ps {
            Ok(Ok(ps)) => {
                // Anything published while we were not subscribed is lost: every
                // waiter re-checks now.
                waiters.wake_all();
                ready.notify_waiters();
                let mut stream = ps.into_on_message();
                loop {
                    let msg = tokio::select! {
                        m = stream.next() => m,
                        _ = closing.cancelled() => return,
                    };
                    let Some(msg) = msg else { break };
                    if let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) {
                        waiters.deliver(text);
                    }
                }
                tracing::warn!("lost the redis wake-up subscription; resubscribing");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to redis wake-ups"),
            Err(_) => tracing::warn!("subscribing to redis wake-ups timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_MS)) => {}
            _ = closing.cancelled() => return,
        }
    }
}
