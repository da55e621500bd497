//! Jittered exponential backoff, shared by HTTP retries and job rescheduling.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): base·2^(attempt-1),
    /// capped at max, with "equal jitter" (half fixed, half random) so that
    /// many jobs failing together do not come back together.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let raw = self.base.as_secs_f64() * 2f64.powi(exp as i32);
        let capped = raw.min(self.max.as_secs_f64());
        let r = unit_random.clamp(0.0, 1.0);
        Duration::from_secs_f64(capped / 2.0 + capped / 2.0 * r)
    }

    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    #[test]
    fn grows_and_caps() {
        assert_eq!(b().delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(b().delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(b().delay(4, 1.0), Duration::from_millis(800));
        assert_eq!(b().delay(10, 1.0), Duration::from_secs(2));
        assert_eq!(b().delay(u32::MAX, 1.0), Duration::from_secs(2));
    }

    #[test]
    fn jitter_keeps_at_least_half() {
        assert_eq!(b().delay(2, 0.0), Duration::from_millis(100));
        let d = b().delay_random(3);
        assert!(
            d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
            "{d:?}"
        );
    }
}
