//! Delays between attempts to reach a dependency that is down, from `backon`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Doubling delays from `min` up to `max`, each with up to 100 % random jitter so that many
/// replicas restarting together do not retry in lock-step. Never runs out: reconnect loops
/// go on until the dependency answers or the process stops.
#[derive(Debug)]
pub struct Backoff {
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let delays = ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times().build();
        Self { delays, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_below_one_delay() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let bases = [100u64, 200, 400, 500, 500, 500];
        for base in bases {
            let delay = backoff.next_delay();
            assert!(delay >= Duration::from_millis(base) && delay <= Duration::from_millis(base * 2), "{delay:?} vs {base}");
        }
    }
}
