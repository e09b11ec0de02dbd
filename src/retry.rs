//! Capped exponential backoff, for every loop that retries an outage (Redis, PostgreSQL).

use std::time::Duration;

/// Sleeps between retries: short at first, so that a blip costs little, and never longer than a
/// few seconds, so that a service that comes back is used again soon.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the current delay and doubles it, up to the cap.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Self::CAP);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}
