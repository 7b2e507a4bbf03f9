//! How the pool sends a request again after the server refused it for now (429
//! over a rate limit, 503 or 507 in an outage that clears by itself) or it got no
//! answer: after the server's `Retry-After` when it sent one, plus a jittered
//! exponential backoff of our own (backon), so a throttled pool never hammers
//! its server and many pools told the same `Retry-After` do not return in step
//! ([`weir_client::Error::retry_pause`]).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use weir_client::Error;

use crate::limits::{
    SETTLE_RETRY_BACKOFF_MS, SETTLE_RETRY_BACKOFF_MS_MAX, SETTLE_THROTTLED_MS_MAX, SETTLE_TRIES_MAX,
};

/// An endless backoff sequence: `min_ms`, doubling up to `max_ms`, each delay
/// plus up to as much again at random.
pub(crate) type Backoff = <ExponentialBuilder as BackoffBuilder>::Backoff;

pub(crate) fn backoff(min_ms: u64, max_ms: u64) -> Backoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(min_ms))
        .with_max_delay(Duration::from_millis(max_ms))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The retries of one request the pool holds results or leases for (a settle
/// batch, a release).
pub(crate) struct Retries {
    backoff: Backoff,
    /// Failures the server did not ask a pause for (no answer, a 5xx without
    /// `Retry-After`).
    failures: u32,
    /// The pauses the server asked for so far.
    throttled: Duration,
    /// Since when the server has not answered at all (refused or broken
    /// connections: a restart, most often), if that is how the last try failed.
    away_since: Option<std::time::Instant>,
}

impl Retries {
    pub(crate) fn new() -> Retries {
        Retries {
            backoff: backoff(SETTLE_RETRY_BACKOFF_MS, SETTLE_RETRY_BACKOFF_MS_MAX),
            failures: 0,
            throttled: Duration::ZERO,
            away_since: None,
        }
    }

    /// The pause before the next try after `e` (a retryable error), or `None`
    /// to give up. A server that answers with `Retry-After` is alive and asking
    /// for patience: it is waited out for up to `SETTLE_THROTTLED_MS_MAX` in all,
    /// however many tries that takes. A server that does not answer at all (it
    /// is restarting, or the network is down) is tried for as long, by the clock:
    /// giving up sooner would drop finished tasks' results while it comes back.
    /// Any other failure (a 5xx without `Retry-After`) counts toward
    /// `SETTLE_TRIES_MAX`.
    pub(crate) fn after(&mut self, e: &Error) -> Option<Duration> {
        let backoff = self
            .backoff
            .next()
            .unwrap_or(Duration::from_millis(SETTLE_RETRY_BACKOFF_MS_MAX));
        if e.is_unanswered() {
            let since = *self.away_since.get_or_insert_with(std::time::Instant::now);
            return (since.elapsed() <= Duration::from_millis(SETTLE_THROTTLED_MS_MAX))
                .then_some(backoff);
        }
        self.away_since = None;
        match e.retry_after() {
            Some(asked) => {
                self.throttled = self.throttled.saturating_add(asked);
                (self.throttled <= Duration::from_millis(SETTLE_THROTTLED_MS_MAX))
                    .then(|| e.retry_pause(backoff))
            }
            None => {
                self.failures += 1;
                (self.failures < SETTLE_TRIES_MAX).then_some(backoff)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_limited(secs: u64) -> Error {
        Error::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
        }
    }

    fn unavailable() -> Error {
        Error::Server {
            status: 502,
            detail: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn the_backoff_is_jittered_and_capped() {
        let delays: Vec<Duration> = backoff(50, 400).take(8).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis((50u64 << i).min(400));
            assert!(*d >= base && *d <= 2 * base, "delay {i}: {d:?}");
        }
    }

    #[test]
    fn plain_failures_give_up_after_the_tries() {
        let mut r = Retries::new();
        for _ in 1..SETTLE_TRIES_MAX {
            let d = r.after(&unavailable()).unwrap();
            assert!(d <= 2 * Duration::from_millis(SETTLE_RETRY_BACKOFF_MS_MAX));
        }
        assert_eq!(r.after(&unavailable()), None);
    }

    fn refused() -> Error {
        Error::Channel {
            detail: "connection refused".to_owned(),
        }
    }

    #[test]
    fn a_server_that_does_not_answer_is_tried_for_the_budget_by_the_clock() {
        let mut r = Retries::new();
        // Far more tries than SETTLE_TRIES_MAX while the budget lasts.
        for _ in 0..4 * SETTLE_TRIES_MAX {
            assert!(r.after(&refused()).is_some());
        }
        // Away for longer than the budget: given up.
        r.away_since =
            Some(std::time::Instant::now() - Duration::from_millis(SETTLE_THROTTLED_MS_MAX + 1));
        assert_eq!(r.after(&refused()), None);
    }

    #[test]
    fn a_throttling_server_is_waited_out_up_to_the_budget() {
        let mut r = Retries::new();
        let asked = Duration::from_secs(2);
        let tries = SETTLE_THROTTLED_MS_MAX / 2_000;
        // Far more tries than SETTLE_TRIES_MAX, each at least what was asked.
        assert!(tries > u64::from(SETTLE_TRIES_MAX));
        for _ in 0..tries {
            let d = r.after(&rate_limited(2)).unwrap();
            assert!(d > asked, "{d:?}");
        }
        assert_eq!(r.after(&rate_limited(2)), None);
    }
}
