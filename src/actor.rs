//! What every actor shares, the pipeline's stages and the sources alike: running its work guarded
//! against panics ([`guarded`]), moving its CPU-heavy part off the actor thread ([`off_thread`]),
//! counting its restarts and seeing a stop request.

use crate::telemetry::Metrics;
use actix::prelude::*;
use futures_util::FutureExt as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Runs a stage's pure, CPU-heavy part (parsing a batch, sorting it into write shards) on tokio's
/// blocking pool instead of the actor thread. The reader, the writer's PostgreSQL connections and
/// every actor share that one thread: a large batch parsed there held up every socket
/// for its duration, and PostgreSQL waited on a client busy parsing. A panic in `work` is resumed
/// here, so [`guarded`] counts and restarts as before.
pub async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels a blocking task, and then nothing awaits this.
            Err(error) => panic!("blocking work was cancelled: {error}"),
        },
    }
}

/// Runs a stage's work so that a panic stops the actor (counted, logged) instead of killing its
/// thread; the `Supervisor` restarts it. actix does not catch panics by itself.
pub fn guarded<A>(
    actor: &'static str,
    work: impl Future<Output = ()> + 'static,
) -> impl ActorFuture<A, Output = ()>
where
    A: Actor<Context = Context<A>>,
{
    actix::fut::wrap_future::<_, A>(AssertUnwindSafe(work).catch_unwind()).map(
        move |outcome, _actor, ctx: &mut Context<A>| {
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                tracing::error!(actor, panic = %message, "actor panicked, restarting it");
                ctx.stop();
            }
        },
    )
}

/// True once the application asked its loops to stop, or dropped the sender (a closed channel
/// must stop a loop too, or `changed()` returning at once would make it spin).
pub fn stop_requested(stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Counts a restart when the supervisor restarts an actor.
pub fn count_restart(metrics: &Metrics, actor: &str) {
    metrics.actor_restarts.with_label_values(&[actor]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn work_off_the_actor_thread_returns_its_value_and_its_panic() {
        let actor_thread = std::thread::current().id();
        let (value, thread) = off_thread(|| (6 * 7, std::thread::current().id())).await;
        assert_eq!(value, 42);
        assert_ne!(thread, actor_thread);
        // A panic comes back to the awaiting stage, where `guarded` turns it into a restart.
        let panic = AssertUnwindSafe(off_thread(|| -> u32 { panic!("bad batch") }))
            .catch_unwind()
            .await
            .unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"bad batch"));
    }
}
