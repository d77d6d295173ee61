//! Full-jitter exponential backoff, used by clients to reconnect and by the relay to retry its
//! upstreams (SQS, Redis).
//!
//! `delay(n) = min + rand(0, min(max - min, min · 2ⁿ))`: the ceiling doubles per attempt and is
//! capped, and the random part spreads many clients that lost the same server over the whole
//! window instead of bringing them back at one instant.

#[allow(unused_imports)]
use crate::prelude::*;

use core::time::Duration;

/// Backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Smallest delay, and the base of the exponential growth.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry), given `unit`, a random
    /// number in `[0, 1)`.
    ///
    /// Computed in whole nanoseconds (`u64`, saturating: 584 years) rather than with `Duration`'s
    /// checked arithmetic, whose panic paths and 128-bit products were most of this function's
    /// size in the browser client; a `unit` that is not a number counts as 0.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let min = nanos(self.min.min(self.max));
        let spread_cap = nanos(self.max) - min;
        // 2^attempt overflows quickly; past 2^31 the cap has long been reached.
        let growth = min.saturating_mul(1 << attempt.min(31));
        let spread = growth.min(spread_cap);
        // Exact below 2^53 ns (104 days); `as` saturates, and maps NaN to 0.
        Duration::from_nanos(min + (spread as f64 * unit.clamp(0.0, 1.0)) as u64)
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
fn nanos(d: Duration) -> u64 {
    d.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff { min: Duration::from_millis(500), max: Duration::from_secs(20) };

    #[test]
    fn stays_within_bounds_for_every_attempt() {
        for attempt in 0..100 {
            for unit in [0.0, 0.25, 0.5, 0.999_999, 1.0] {
                let d = B.delay(attempt, unit);
                assert!(d >= B.min && d <= B.max, "attempt {attempt} unit {unit}: {d:?}");
            }
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(B.delay(0, 1.0), Duration::from_millis(1000));
        assert_eq!(B.delay(1, 1.0), Duration::from_millis(1500));
        assert_eq!(B.delay(2, 1.0), Duration::from_millis(2500));
        assert_eq!(B.delay(10, 1.0), Duration::from_secs(20));
        assert_eq!(B.delay(u32::MAX, 1.0), Duration::from_secs(20));
        assert_eq!(B.delay(7, 0.0), B.min, "no jitter drawn: the floor");
    }

    #[test]
    fn jitter_spreads_the_delay() {
        let a = B.delay(5, 0.1);
        let b = B.delay(5, 0.9);
        assert!(b > a + Duration::from_secs(10), "{a:?} vs {b:?}");
    }

    #[test]
    fn extremes_neither_panic_nor_leave_the_bounds() {
        let huge = Backoff { min: Duration::from_secs(u64::MAX / 4), max: Duration::MAX };
        assert_eq!(huge.delay(40, 0.0), Duration::from_nanos(u64::MAX), "saturated");
        assert_eq!(B.delay(3, f64::NAN), B.min);
        assert_eq!(B.delay(3, -1.0), B.min);
        assert_eq!(B.delay(3, 7.0), Duration::from_millis(4500));
    }

    #[test]
    fn min_above_max_is_clamped() {
        let b = Backoff { min: Duration::from_secs(5), max: Duration::from_secs(1) };
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(1));
    }
}
