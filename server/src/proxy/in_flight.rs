//! Calls in flight: each accepted call runs on a task of its own, tracked so
//! shutdown waits for it, and a caller that hangs up cannot stop it between the
//! upstream call and its outcome record; past `AEGIS_PROXY_MAX_IN_FLIGHT` calls are
//! shed at once (503 `overload`, nothing ran, nothing audited — like a failed
//! authentication, auditing them would let anyone flood the log).

use app::error::AppError;

use crate::call::Stage;
use crate::call::outcome::{Failure, ProxyResult};

/// Runs `work` on a task of its own, tracked in `tracker`, and waits for it;
/// dropping the returned future does not stop `work`. It keeps the caller's
/// tracing span, so its log lines still carry the request id.
pub async fn detached<T: Send + 'static>(
    tracker: &tokio_util::task::TaskTracker,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, AppError> {
    use tracing::Instrument;
    tracker.spawn(work.instrument(tracing::Span::current())).await.map_err(|e| {
        tracing::error!(error = %e, "a proxy task failed");
        AppError::internal()
    })
}

/// The answer to a shed call.
pub fn overloaded(request_id: String) -> ProxyResult {
    tracing::debug!(request = %request_id, "at the in-flight bound: call shed");
    warn_shedding();
    let reason = "AEGIS is at capacity (AEGIS_PROXY_MAX_IN_FLIGHT calls in flight); nothing was performed; retry shortly";
    ProxyResult::failed(request_id, Stage::Overload, reason, Failure::Unavailable)
}

/// Warns at most once a second: under overload a log line per shed call would
/// only add to it (`/metrics` counts every one).
fn warn_shedding() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST_WARNED.load(Ordering::Relaxed);
    if now > last && LAST_WARNED.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!("at the in-flight bound (AEGIS_PROXY_MAX_IN_FLIGHT): shedding calls");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Instrument;

    /// Detached work finishes even when its caller is dropped, is tracked until it
    /// does, and logs under the caller's span (the request id).
    #[tokio::test]
    async fn detached_work_outlives_its_caller_and_keeps_its_span() {
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let tracker = tokio_util::task::TaskTracker::new();
        let span = tracing::info_span!("request", request_id = "req_1");
        let expected = span.id();
        assert!(expected.is_some(), "spans are recorded");
        let seen =
            detached(&tracker, async { tracing::Span::current().id() }).instrument(span).await.unwrap();
        assert_eq!(seen, expected);

        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let caller = detached(&tracker, async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        // The caller gives up at once; the work still completes and is waited for.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(1), caller).await.is_err());
        assert_eq!(tracker.len(), 1);
        tracker.close();
        tracker.wait().await;
        assert!(done_rx.await.is_ok(), "the work ran to completion");
    }
}
