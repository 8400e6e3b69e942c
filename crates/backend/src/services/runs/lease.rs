//! Holding a running run: its lease is renewed while it runs, and a cancel request (a column any
//! replica may set) or this replica's shutdown becomes the run's stop signal.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::RunWorker;

/// Why a run stopped before Terraform finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    Cancelled,
    Shutdown,
}

impl RunWorker {
    /// Renews the lease and turns a cancel request or shutdown into `cancel`, saying which in
    /// `reason`.
    pub(super) async fn watch(
        self,
        run_id: Uuid,
        shutdown: CancellationToken,
        cancel: CancellationToken,
        reason: Arc<OnceLock<StopReason>>,
    ) {
        let renew_every = self.settings.lease / 3;
        let mut next_renewal = Instant::now() + renew_every;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = reason.set(StopReason::Shutdown);
                    cancel.cancel();
                    return;
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if !cancel.is_cancelled()
                && matches!(self.store().cancel_requested(run_id).await, Ok(true))
            {
                tracing::info!(%run_id, "cancel requested");
                let _ = reason.set(StopReason::Cancelled);
                cancel.cancel();
            }
            if Instant::now() >= next_renewal {
                let until = crate::domain::now()
                    + chrono::Duration::from_std(self.settings.lease).unwrap_or_default();
                match self.store().renew_lease(run_id, &self.id, until).await {
                    Ok(true) => next_renewal = Instant::now() + renew_every,
                    Ok(false) => {
                        tracing::error!(%run_id, "lost the lease of a running run; stopping it");
                        let _ = reason.set(StopReason::Shutdown);
                        cancel.cancel();
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "failed to renew a run lease; retrying")
                    }
                }
            }
        }
    }
}
