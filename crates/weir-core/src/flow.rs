//! Flow control of one queue: its configuration (dispatch rate, in-flight cap,
//! pending cap, pause) and the rate limiter every store applies at lease time.
//!
//! The limiter is GCRA (the generic cell rate algorithm, a token bucket kept as
//! one number): the "theoretical arrival time" `tat_ms` of the next token. Every
//! store runs the same arithmetic: the embedded store here, the Redis store in its
//! lease script (`lease.lua` restates `Gcra`), with time as an argument.
//!
//! May not: read a clock, sleep, or know how a store keeps the state.

use crate::validate::InvalidInput;

/// Highest `rate_per_sec` a queue may be given (far above what one queue leases).
pub const RATE_PER_SEC_MAX: f64 = 1_000_000.0;
/// Lowest `rate_per_sec` (one task a day, roughly).
pub const RATE_PER_SEC_MIN: f64 = 0.00001;
/// Largest `burst`.
pub const BURST_MAX: u64 = 1_000_000;

/// A queue's flow-control settings. `None` means no limit; a fresh queue has none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueConfig {
    /// Most tasks leased per second, summed over every worker and server.
    pub rate_per_sec: Option<f64>,
    /// Most tasks leased at once after an idle spell (the bucket's size). Unset:
    /// one second's worth of the rate, at least 1 (`effective_burst`). GCRA
    /// forgets the lateness of a lease the bucket cannot absorb, so a burst of 1
    /// spaces leases strictly and loses what each comes late (wake-ups come in
    /// whole milliseconds); the full rate needs `burst >= 1 + rate / 1000`, which
    /// the default always is.
    pub burst: Option<u64>,
    /// Most tasks of the queue active at once.
    pub max_in_flight: Option<u64>,
    /// Most tasks scheduled + pending; an enqueue beyond it is refused (429).
    pub max_pending: Option<u64>,
    /// A paused queue takes enqueues and leases nothing.
    pub paused: bool,
}

/// A change to a queue's settings: each field `None` leaves the setting as it is,
/// `Some(None)` clears it, `Some(Some(v))` sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConfigPatch {
    pub rate_per_sec: Option<Option<f64>>,
    pub burst: Option<Option<u64>>,
    pub max_in_flight: Option<Option<u64>>,
    pub max_pending: Option<Option<u64>>,
    pub paused: Option<bool>,
}

impl QueueConfig {
    /// True for a queue with no setting at all (what a queue has before any).
    pub fn is_default(&self) -> bool {
        *self == QueueConfig::default()
    }

    /// The bucket size the limiter uses: `burst`, or one second of the rate.
    pub fn effective_burst(&self) -> u64 {
        match (self.burst, self.rate_per_sec) {
            (Some(b), _) => b,
            (None, Some(r)) => (r.ceil() as u64).clamp(1, BURST_MAX),
            (None, None) => 1,
        }
    }

    /// The limiter of this config, if it has a rate.
    pub fn gcra(&self) -> Option<Gcra> {
        self.rate_per_sec.map(|r| Gcra {
            interval_ms: 1000.0 / r,
            burst: self.effective_burst(),
        })
    }

    /// This config with `patch` applied, checked against the limits
    /// (`pending_max`: the most a queue may hold, `Limits::queue_tasks_max`).
    pub fn patched(
        &self,
        patch: &ConfigPatch,
        pending_max: u64,
    ) -> Result<QueueConfig, InvalidInput> {
        let mut c = *self;
        if let Some(v) = patch.rate_per_sec {
            c.rate_per_sec = v;
        }
        if let Some(v) = patch.burst {
            c.burst = v;
        }
        if let Some(v) = patch.max_in_flight {
            c.max_in_flight = v;
        }
        if let Some(v) = patch.max_pending {
            c.max_pending = v;
        }
        if let Some(v) = patch.paused {
            c.paused = v;
        }
        c.check(pending_max)?;
        Ok(c)
    }

    /// Whether every setting is in range.
    pub fn check(&self, pending_max: u64) -> Result<(), InvalidInput> {
        if let Some(r) = self.rate_per_sec {
            if !(RATE_PER_SEC_MIN..=RATE_PER_SEC_MAX).contains(&r) {
                return Err(InvalidInput::invalid(
                    "rate_per_sec",
                    format!("is {r}; it must be between {RATE_PER_SEC_MIN} and {RATE_PER_SEC_MAX}"),
                ));
            }
        }
        if let Some(b) = self.burst {
            crate::validate::range("burst", b, 1, BURST_MAX)?;
        }
        if let Some(n) = self.max_in_flight {
            crate::validate::range("max_in_flight", n, 1, pending_max)?;
        }
        if let Some(n) = self.max_pending {
            crate::validate::range("max_pending", n, 1, pending_max)?;
        }
        Ok(())
    }

    /// How many tasks a lease may take now, before the rate: none while paused,
    /// else what the in-flight cap leaves (`active` tasks are out), at most `want`.
    pub fn room(&self, want: u64, active: u64) -> u64 {
        if self.paused {
            return 0;
        }
        match self.max_in_flight {
            Some(cap) => want.min(cap.saturating_sub(active)),
            None => want,
        }
    }
}

/// GCRA over milliseconds: one token every `interval_ms`, at most `burst` saved.
/// The state is `tat_ms`, the time at which the bucket would be full again (0 for a
/// fresh, full bucket).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gcra {
    pub interval_ms: f64,
    pub burst: u64,
}

impl Gcra {
    /// Tokens in the bucket at `now_ms`.
    pub fn available(&self, tat_ms: f64, now_ms: f64) -> u64 {
        let base = tat_ms.max(now_ms);
        let slack = now_ms + self.burst as f64 * self.interval_ms - base;
        // A tiny epsilon so that a token due exactly now is not lost to rounding.
        let n = (slack / self.interval_ms + 1e-9).floor();
        if n <= 0.0 {
            0
        } else {
            (n as u64).min(self.burst)
        }
    }

    /// The state after spending `n` tokens at `now_ms` (`n` at most `available`).
    pub fn spend(&self, tat_ms: f64, now_ms: f64, n: u64) -> f64 {
        tat_ms.max(now_ms) + n as f64 * self.interval_ms
    }

    /// When the next token is in the bucket (`now_ms` or later), in whole ms.
    pub fn next_ms(&self, tat_ms: f64, now_ms: f64) -> u64 {
        let at = tat_ms - (self.burst as f64 - 1.0) * self.interval_ms;
        at.max(now_ms).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bucket(rate: f64, burst: u64) -> Gcra {
        QueueConfig {
            rate_per_sec: Some(rate),
            burst: Some(burst),
            ..QueueConfig::default()
        }
        .gcra()
        .expect("a rate")
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_one_token_per_interval() {
        let g = bucket(50.0, 10);
        let mut tat = 0.0;
        let now = 1_000_000.0;
        assert_eq!(g.available(tat, now), 10);
        tat = g.spend(tat, now, 10);
        assert_eq!(g.available(tat, now), 0);
        assert_eq!(g.next_ms(tat, now), 1_000_020);
        assert_eq!(g.available(tat, now + 19.0), 0);
        assert_eq!(g.available(tat, now + 20.0), 1);
        assert_eq!(g.available(tat, now + 100.0), 5);
        // Idle long enough: full again, never more.
        assert_eq!(g.available(tat, now + 60_000.0), 10);
    }

    #[test]
    fn unset_burst_is_one_second_of_the_rate() {
        let c = |r| QueueConfig {
            rate_per_sec: Some(r),
            ..QueueConfig::default()
        };
        assert_eq!(c(50.0).effective_burst(), 50);
        assert_eq!(c(0.5).effective_burst(), 1);
        assert_eq!(c(2.5).effective_burst(), 3);
    }

    #[test]
    fn patches_set_clear_and_keep_and_bad_values_are_refused() {
        let base = QueueConfig {
            rate_per_sec: Some(5.0),
            max_pending: Some(10),
            ..QueueConfig::default()
        };
        let p = ConfigPatch {
            rate_per_sec: Some(None),
            max_in_flight: Some(Some(3)),
            paused: Some(true),
            ..ConfigPatch::default()
        };
        let c = base.patched(&p, 100).unwrap();
        assert_eq!(
            c,
            QueueConfig {
                rate_per_sec: None,
                burst: None,
                max_in_flight: Some(3),
                max_pending: Some(10),
                paused: true,
            }
        );
        for bad in [
            ConfigPatch {
                rate_per_sec: Some(Some(0.0)),
                ..ConfigPatch::default()
            },
            ConfigPatch {
                rate_per_sec: Some(Some(f64::NAN)),
                ..ConfigPatch::default()
            },
            ConfigPatch {
                rate_per_sec: Some(Some(-1.0)),
                ..ConfigPatch::default()
            },
            ConfigPatch {
                burst: Some(Some(0)),
                ..ConfigPatch::default()
            },
            ConfigPatch {
                max_in_flight: Some(Some(0)),
                ..ConfigPatch::default()
            },
            ConfigPatch {
                max_pending: Some(Some(101)),
                ..ConfigPatch::default()
            },
        ] {
            assert!(base.patched(&bad, 100).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn room_is_nothing_while_paused_and_what_the_cap_leaves() {
        let mut c = QueueConfig {
            max_in_flight: Some(3),
            ..QueueConfig::default()
        };
        assert_eq!(c.room(10, 0), 3);
        assert_eq!(c.room(10, 2), 1);
        assert_eq!(c.room(10, 5), 0);
        assert_eq!(c.room(2, 0), 2);
        c.paused = true;
        assert_eq!(c.room(10, 0), 0);
    }

    proptest! {
        /// However leases arrive, the tokens spent by time t never exceed
        /// burst + rate * t, and an eager taker gets at least rate * t.
        #[test]
        fn spending_never_beats_the_rate_and_an_eager_taker_keeps_up(
            rate in 0.5f64..2000.0,
            burst in 1u64..50,
            steps in proptest::collection::vec((0u64..200, 1u64..100), 1..200),
        ) {
            let g = bucket(rate, burst);
            let start = 5_000_000.0;
            let (mut tat, mut now, mut spent) = (0.0, start, 0u64);
            for (dt, want) in steps {
                now += dt as f64;
                let n = g.available(tat, now).min(want);
                tat = g.spend(tat, now, n);
                spent += n;
                let bound = burst as f64 + rate * (now - start) / 1000.0;
                prop_assert!(spent as f64 <= bound + 1e-6, "{spent} > {bound}");
            }
            // An eager taker from here: every token as it comes.
            let until = now + 10_000.0;
            let mut eager = 0u64;
            while now < until {
                let n = g.available(tat, now);
                tat = g.spend(tat, now, n);
                eager += n;
                now = (g.next_ms(tat, now) as f64).max(now + 1.0);
            }
            // The taker comes at whole milliseconds (as timers wake), up to 1 ms
            // after a token is due. GCRA forgets lateness the bucket cannot hold:
            // only a bucket with a millisecond of room beside the token in hand
            // keeps the full rate.
            let want = rate * 10.0;
            if (burst as f64 - 1.0) * 1000.0 / rate >= 1.0 {
                // Less at most what the bucket owed when the window began.
                prop_assert!(eager as f64 >= want - burst as f64 - 1.0, "{eager} < {want} - {burst}");
            }
            prop_assert!(eager as f64 <= want + burst as f64 + 1.0, "{eager} > {want} + {burst}");
        }
    }
}
