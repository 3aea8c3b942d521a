//! Exponential backoff with jitter for reconnect loops.

use std::time::Duration;

/// Doubling delays between `initial` and `max`, with up to 25% random jitter so that many
/// replicas restarting together do not retry in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let jitter = base.mul_f64(f64::from(nanos % 250) / 1000.0);
        base + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let d: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        let bases = [100u64, 200, 400, 500, 500];
        for (delay, base) in d.iter().zip(bases) {
            assert!(*delay >= Duration::from_millis(base) && *delay < Duration::from_millis(base * 5 / 4 + 1), "{delay:?} vs {base}");
        }
    }
}
