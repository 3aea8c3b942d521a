//! Delays between attempts to reach a dependency that is down, from `backon`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Doubling delays from `min` up to `max`, with random jitter so that many replicas
/// restarting together do not retry in lock-step; no delay exceeds `max` by more than a
/// quarter. Never runs out: reconnect loops go on until the dependency answers or the
/// process stops.
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
        // backon's jitter adds up to one whole delay; the cap keeps an outage's worst-case
        // retry interval near `max`.
        self.delays.next().unwrap_or(self.max).min(self.max + self.max / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_never_passes_a_quarter_above_it() {
        for _ in 0..100 {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
            for base in [100u64, 200, 400, 500, 500, 500] {
                let delay = backoff.next_delay();
                let ceiling = (base * 2).min(625);
                assert!(delay >= Duration::from_millis(base) && delay <= Duration::from_millis(ceiling), "{delay:?} vs {base}");
            }
        }
    }
}
