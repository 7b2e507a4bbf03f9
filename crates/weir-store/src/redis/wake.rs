//! Wake-ups across servers. Every script that makes a parked call's answer
//! change PUBLISHes one message on `<prefix>:wake` listing tokens: `q<hex name>`
//! (a queue got leasable work), `t<id>` (a task ended or had a cancel requested),
//! `g<id>` (a group ended). Each broker holds one subscriber that fans tokens out
//! to local waiters (one `Notify` per token, removed when its last waiter leaves).
//!
//! Pub/sub loses messages while the subscriber reconnects, so after each
//! (re)subscribe every waiter is woken to re-check at once, and parked calls also
//! re-check on their own every `RECHECK_MS_MIN..RECHECK_MS_MAX` — one of them per
//! token and interval ([`Waiter::may_recheck`]): a thousand task waits on one
//! task, or lease long-polls on one queue, make one script call per interval
//! between them, not a thousand. A re-check that finds what a lost message would
//! have said wakes the token's other waiters, so they look too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    map: Mutex<HashMap<String, Entry>>,
}

/// One token's waiters: their wake-up, their last re-check, how many they are.
struct Entry {
    notify: Arc<Notify>,
    rechecked: Arc<AtomicU64>,
    count: usize,
}

/// One waiter's registration; dropping it leaves.
pub struct Waiter {
    waiters: Arc<Waiters>,
    token: String,
    pub notify: Arc<Notify>,
    /// When a waiter of this token last re-checked, in ms of [`since_start_ms`].
    rechecked: Arc<AtomicU64>,
}

impl Waiter {
    /// Whether this waiter should re-check now, its timer having fired: yes
    /// unless another waiter of the same token did within `RECHECK_MS_MIN` (it
    /// would have woken the others had it found anything). A yes claims the
    /// interval.
    pub fn may_recheck(&self) -> bool {
        claim(&self.rechecked, since_start_ms())
    }
}

impl Waiter {
    /// Waits, with `notified` (armed before the caller's last read), for a
    /// reason to read again: a message for the token, `due` (a time the
    /// caller's read named, such as the queue's next scheduled task), the
    /// deadline, or this waiter's turn at the token's shared re-check.
    /// `Some(true)` only for that re-check (then a read that finds something
    /// wakes the others); `None` once the store closes.
    pub async fn next_look(
        &self,
        mut notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        deadline: tokio::time::Instant,
        due: Option<tokio::time::Instant>,
        closing: &CancellationToken,
    ) -> Option<bool> {
        loop {
            let mut until = deadline.min(tokio::time::Instant::now() + recheck());
            if let Some(due) = due {
                until = until.min(due);
            }
            tokio::select! {
                _ = &mut notified => return Some(false),
                _ = tokio::time::sleep_until(until) => {
                    if until >= deadline || due.is_some_and(|d| until >= d) {
                        return Some(false);
                    }
                    if self.may_recheck() {
                        return Some(true);
                    }
                }
                _ = closing.cancelled() => return None,
            }
        }
    }
}

/// Claims a re-check at `now_ms` unless one was claimed within `RECHECK_MS_MIN`.
fn claim(rechecked: &AtomicU64, now_ms: u64) -> bool {
    let last = rechecked.load(Ordering::Relaxed);
    if last != 0 && now_ms.saturating_sub(last) < RECHECK_MS_MIN {
        return false;
    }
    rechecked
        .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// Milliseconds since this process first asked (monotonic).
fn since_start_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&self.token) {
            entry.count -= 1;
            if entry.count == 0 {
                map.remove(&self.token);
            }
        }
    }
}

impl Waiters {
    pub fn register(self: &Arc<Self>, token: String) -> Waiter {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(token.clone()).or_insert_with(|| Entry {
            notify: Arc::new(Notify::new()),
            rechecked: Arc::new(AtomicU64::new(0)),
            count: 0,
        });
        entry.count += 1;
        let notify = entry.notify.clone();
        let rechecked = entry.rechecked.clone();
        drop(map);
        Waiter {
            waiters: self.clone(),
            token,
            notify,
            rechecked,
        }
    }

    /// Wakes the waiters of each token in a message.
    pub fn deliver(&self, message: &str) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for token in message.split(' ') {
            if let Some(entry) = map.get(token) {
                entry.notify.notify_waiters();
            }
        }
    }

    /// Wakes every waiter (after a resubscribe, and at shutdown).
    pub fn wake_all(&self) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for entry in map.values() {
            entry.notify.notify_waiters();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many waiters wait on `token`.
    #[cfg(test)]
    pub fn waiting(&self, token: &str) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(token).map_or(0, |e| e.count)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_recheck_per_token_and_interval() {
        let last = AtomicU64::new(0);
        assert!(claim(&last, 0), "the first re-check is always due");
        assert!(
            !claim(&last, RECHECK_MS_MIN - 1),
            "another within the interval is not"
        );
        assert!(claim(&last, 1 + RECHECK_MS_MIN), "after it, one is again");
        assert!(!claim(&last, 2 + RECHECK_MS_MIN));
    }
}
