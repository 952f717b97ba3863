//! Rate limit for log lines that can repeat many times a second, such as a client error during
//! an outage or a flood of rejected requests. It lets through at most one line per interval
//! and key, which carries the number of lines left out since the previous one.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Decides, per key, whether a line may be logged now.
pub struct LogThrottle<K> {
    interval: Duration,
    /// Per key: when a line was last logged, and how many were left out since.
    state: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Eq + Hash> LogThrottle<K> {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Returns `Some(left_out)` when a line for `key` may be logged now, with the number of
    /// lines left out since the previous one, and `None` when this line is to be left out.
    pub fn admit(&self, key: K) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.get_mut(&key) {
            Some((logged, left_out)) if now.duration_since(*logged) < self.interval => {
                *left_out += 1;
                None
            }
            Some(entry) => Some(std::mem::replace(entry, (now, 0)).1),
            None => {
                state.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_count() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit_at("a", start), Some(0));
        assert_eq!(throttle.admit_at("a", start + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit_at("a", start + Duration::from_secs(9)), None);
        assert_eq!(throttle.admit_at("b", start), Some(0), "keys are separate");
        assert_eq!(
            throttle.admit_at("a", start + Duration::from_secs(10)),
            Some(2)
        );
        assert_eq!(
            throttle.admit_at("a", start + Duration::from_secs(11)),
            None
        );
        assert_eq!(
            throttle.admit_at("a", start + Duration::from_secs(25)),
            Some(1)
        );
    }
}
