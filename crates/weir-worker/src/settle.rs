//! The settle flusher: one task that drains finished tasks' acks and fails from a
//! bounded channel and sends them to `POST /v1/acks` in batches. It sends as soon as
//! the channel is momentarily empty, so an idle pool pays no added delay and a busy
//! one pays one request per batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use weir_client::{AckItem, Client, Error, FailItem, SettleOutcome};

use crate::limits::{ERROR_BYTES_MAX, SETTLE_BATCH_MAX, SETTLE_REQUESTS_IN_FLIGHT_MAX};
use crate::pool::Counters;
use crate::retry::Retries;

/// A finished task's outcome, on its way to the server.
#[derive(Debug)]
pub(crate) enum Settlement {
    Ack(AckItem),
    Fail(FailItem),
}

impl Settlement {
    /// A fail, its error cut to `ERROR_BYTES_MAX` so one long message cannot get a
    /// whole batch refused.
    pub(crate) fn fail(id: String, lease_id: String, error: &str, retry: bool) -> Settlement {
        Settlement::Fail(FailItem {
            id,
            lease_id,
            error: truncate(error, ERROR_BYTES_MAX),
            retry,
        })
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Runs until every sender is gone and the channel is drained, then waits for the
/// batches still in flight.
pub(crate) async fn flush_loop(
    client: Client,
    mut rx: mpsc::Receiver<Settlement>,
    counters: Arc<Counters>,
) {
    let mut in_flight = JoinSet::new();
    while let Some(first) = rx.recv().await {
        let (acks, fails) = batch(first, &mut rx);
        while in_flight.len() >= SETTLE_REQUESTS_IN_FLIGHT_MAX {
            in_flight.join_next().await;
        }
        in_flight.spawn(send_batch(client.clone(), acks, fails, counters.clone()));
    }
    while in_flight.join_next().await.is_some() {}
}

/// `first` and as many more results as are already there, up to a batch
/// (`SETTLE_BATCH_MAX`): the flusher's and the worker channel's one batching rule.
pub(crate) fn batch(
    first: Settlement,
    rx: &mut mpsc::Receiver<Settlement>,
) -> (Vec<AckItem>, Vec<FailItem>) {
    let mut acks = Vec::new();
    let mut fails = Vec::new();
    let mut push = |s| match s {
        Settlement::Ack(a) => acks.push(a),
        Settlement::Fail(f) => fails.push(f),
    };
    push(first);
    for _ in 1..SETTLE_BATCH_MAX {
        match rx.try_recv() {
            Ok(s) => push(s),
            Err(_) => break,
        }
    }
    (acks, fails)
}

/// Whether a settle that failed this way is worth sending again. A retry is safe:
/// items the first try already applied come back 409 (their lease is spent).
fn retryable(e: &Error) -> bool {
    e.is_transient() || matches!(e, Error::Server { .. } | Error::Decode { .. })
}

pub(crate) async fn send_batch(
    client: Client,
    acks: Vec<AckItem>,
    fails: Vec<FailItem>,
    counters: Arc<Counters>,
) {
    let mut retries = Retries::new();
    let mut tries = 0;
    loop {
        tries += 1;
        match client.settle(&acks, &fails).await {
            Ok(resp) => {
                tally(&resp.acks, &counters, true);
                tally(&resp.fails, &counters, false);
                return;
            }
            Err(e) if retryable(&e) => {
                let Some(pause) = retries.after(&e) else {
                    // The leases will run out and the server hand the tasks out
                    // again: delivery is at-least-once, so this loses no task.
                    tracing::error!(error = %e, tries, items = acks.len() + fails.len(), "settle failed; giving up on this batch");
                    counters
                        .refused
                        .fetch_add((acks.len() + fails.len()) as u64, Ordering::Relaxed);
                    return;
                };
                tracing::warn!(error = %e, tries, items = acks.len() + fails.len(), pause_ms = pause.as_millis() as u64, "settle failed; retrying");
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                // A 4xx for the whole batch means one item is unacceptable (a result
                // over the size limit, say). Send them one by one so the rest settle.
                tracing::warn!(error = %e, items = acks.len() + fails.len(), "settle batch refused; settling items one by one");
                settle_singly(&client, acks, fails, &counters).await;
                return;
            }
        }
    }
}

pub(crate) fn tally(outcomes: &[SettleOutcome], counters: &Counters, acks: bool) {
    for o in outcomes {
        if o.ok {
            let c = if acks {
                &counters.completed
            } else {
                &counters.failed
            };
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id = %o.id,
                status = o.status,
                error = o.error.as_deref().unwrap_or(""),
                "the server refused a result (a 409 means the lease ran out first); dropped"
            );
        }
    }
}

/// The slow path of a batch refused as a whole.
async fn settle_singly(
    client: &Client,
    acks: Vec<AckItem>,
    fails: Vec<FailItem>,
    counters: &Counters,
) {
    for a in acks {
        match client.ack(&a.id, &a.lease_id, &a.result).await {
            Ok(()) => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(Error::Invalid { detail, .. }) => {
                // The result itself is unacceptable: fail the task for good rather
                // than let it run again and produce the same result.
                let error = truncate(
                    &format!("the server refused the handler's result: {detail}"),
                    ERROR_BYTES_MAX,
                );
                match client.fail(&a.id, &a.lease_id, &error, false).await {
                    Ok(_) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => refused(counters, &a.id, &e),
                }
            }
            Err(e) => refused(counters, &a.id, &e),
        }
    }
    for f in fails {
        match client.fail(&f.id, &f.lease_id, &f.error, f.retry).await {
            Ok(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => refused(counters, &f.id, &e),
        }
    }
}

fn refused(counters: &Counters, id: &str, e: &Error) {
    counters.refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(id, error = %e, "the server refused a result; dropped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdef", 5), "ab...");
        let s = "é".repeat(10);
        let t = truncate(&s, 8);
        assert!(t.len() <= 8, "{t}");
        assert!(t.ends_with("..."));
    }
}
