//! Whether a source consumes, for `/readyz`: a source that has not consumed for longer than its
//! grace period (the MQTT source without a subscribed connection, a channel no instance bridges)
//! makes the instance not ready, with the reason.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Consuming {
    /// Why the source does not consume and since when; `None` while it does.
    state: Mutex<Option<(Instant, String)>>,
    grace: Duration,
    /// What the refusal says, before how long and why: "not consuming", say.
    what: &'static str,
}

impl Consuming {
    /// Not consuming yet, because `starting`: the grace period counts from now.
    pub fn new(grace: Duration, what: &'static str, starting: &str) -> Self {
        Self {
            state: Mutex::new(Some((Instant::now(), starting.to_owned()))),
            grace,
            what,
        }
    }

    /// `Err` naming why, once the source has not consumed for longer than the grace period.
    pub fn check(&self) -> Result<(), String> {
        match &*self.lock() {
            Some((since, why)) if since.elapsed() > self.grace => Err(format!(
                "{} for {}s: {why}",
                self.what,
                since.elapsed().as_secs()
            )),
            _ => Ok(()),
        }
    }

    pub fn consuming(&self) {
        *self.lock() = None;
    }

    /// Not consuming because of `why`; the time counts from the first such moment.
    pub fn not_consuming(&self, why: String) {
        let mut state = self.lock();
        match &mut *state {
            Some((_, reason)) => *reason = why,
            None => *state = Some((Instant::now(), why)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
