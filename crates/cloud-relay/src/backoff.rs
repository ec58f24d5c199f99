//! Capped exponential backoff with jitter, so a fleet that lost its upstream at once does not
//! come back at once.

use std::time::Duration;

pub struct Backoff {
    first: Duration,
    cap: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            current: None,
        }
    }

    /// The next wait: the first, then doubling up to the cap, each between 80% and 100% of it.
    pub fn next_wait(&mut self) -> Duration {
        let base = match self.current {
            None => self.first,
            Some(d) => (d * 2).min(self.cap),
        };
        self.current = Some(base);
        base.mul_f64(0.8 + 0.2 * fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_at_most_a_fifth_of_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let waits: Vec<f64> = (0..6).map(|_| b.next_wait().as_secs_f64()).collect();
        for (wait, base) in waits.iter().zip([1.0, 2.0, 4.0, 8.0, 10.0, 10.0]) {
            assert!(*wait <= base && *wait >= base * 0.8, "{wait} for {base}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }
}
