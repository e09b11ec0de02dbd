//! Readiness signals, shared by what they describe and `/readyz`, which reads them: whether the
//! stream readers run ([`ReadersRunning`]), whether batches commit ([`WriteHealth`]), and whether
//! a source consumes ([`Consuming`]: the MQTT source without a subscribed connection, a channel no
//! instance bridges, for longer than its grace period).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The running flags of an instance's readers, one per stream it reads.
#[derive(Clone, Debug, Default)]
pub struct ReadersRunning(Arc<Vec<Arc<AtomicBool>>>);

impl ReadersRunning {
    pub fn new(flags: Vec<Arc<AtomicBool>>) -> Self {
        Self(Arc::new(flags))
    }

    /// Every reader's loop runs (readiness).
    pub fn all(&self) -> bool {
        self.0.iter().all(|f| f.load(Ordering::Acquire))
    }

    /// Some reader's loop still runs.
    pub fn any(&self) -> bool {
        self.0.iter().any(|f| f.load(Ordering::Acquire))
    }
}

/// Whether batch writes commit: since when they fail and the last error, for `/readyz` (a full
/// disk or a read-only server answers `SELECT 1` but takes no batch) and for logging an outage
/// once when it starts and once when it ends, however many batches and lanes retry.
#[derive(Debug, Default)]
pub struct WriteHealth {
    failing: Mutex<Option<(Instant, String)>>,
}

impl WriteHealth {
    /// `Err` naming the last error while batches fail.
    pub fn check(&self) -> Result<(), String> {
        match &*self.lock() {
            Some((since, why)) => Err(format!(
                "batch writes failing for {}s: {why}",
                since.elapsed().as_secs()
            )),
            None => Ok(()),
        }
    }

    /// Records a failed attempt; true when writes worked until now.
    pub fn fails(&self, why: String) -> bool {
        let mut state = self.lock();
        match &mut *state {
            Some((_, last)) => {
                *last = why;
                false
            }
            None => {
                *state = Some((Instant::now(), why));
                true
            }
        }
    }

    /// Records a commit (or a refusal, which is not an outage); true when writes were failing.
    pub fn works(&self) -> bool {
        self.lock().take().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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
