//! Retry backoff: exponential in the attempt number, capped, with "equal jitter"
//! (half fixed, half random) so retries of a burst spread out instead of
//! returning together.

/// Backoff policy for a failed attempt that will be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry, before jitter.
    pub base_ms: u64,
    /// Largest delay before any retry, before jitter.
    pub cap_ms: u64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base_ms: 1_000,
            cap_ms: 3_600_000,
        }
    }
}

impl Backoff {
    /// The delay before the retry that follows failed attempt `attempt` (1-based).
    /// `unit` is a uniform random number in [0, 1); the result lies in
    /// `[d/2, d]` where `d = min(cap, base * 2^(attempt-1))`.
    pub fn delay_ms(&self, attempt: u32, unit: f64) -> u64 {
        debug_assert!((0.0..1.0).contains(&unit));
        let exp = attempt.saturating_sub(1).min(63);
        let full = self
            .base_ms
            .saturating_mul(1u64.checked_shl(exp).unwrap_or(u64::MAX))
            .min(self.cap_ms);
        let half = full / 2;
        let jitter = ((full - half) as f64 * unit.clamp(0.0, 1.0)) as u64;
        half + jitter.min(full - half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_then_caps() {
        let b = Backoff {
            base_ms: 100,
            cap_ms: 1000,
        };
        assert_eq!(b.delay_ms(1, 0.0), 50);
        assert_eq!(b.delay_ms(2, 0.0), 100);
        assert_eq!(b.delay_ms(3, 0.0), 200);
        assert_eq!(b.delay_ms(10, 0.0), 500);
        assert_eq!(b.delay_ms(1000, 0.999_999), 999);
    }

    proptest! {
        #[test]
        fn stays_within_bounds(base in 0u64..100_000, cap in 0u64..10_000_000, attempt in 0u32..10_000, unit in 0.0f64..1.0) {
            let b = Backoff { base_ms: base, cap_ms: cap };
            let d = b.delay_ms(attempt, unit);
            let full = (base as u128 * (1u128 << attempt.saturating_sub(1).min(63))).min(cap as u128) as u64;
            prop_assert!(d <= full);
            prop_assert!(d >= full / 2);
        }
    }
}
