//! Run events reach subscribers through the database (`EventFeed::follow` is the stream
//! every SSE subscriber reads): the run worker stores each event, then
//! wakes subscribers of that deployment, who read the new rows themselves. The bus only carries
//! deployment ids, so a slow subscriber that misses wake-ups loses nothing (it reads from its
//! last event id), and a Postgres `LISTEN/NOTIFY` can carry the same ids between replicas.

use std::{collections::VecDeque, time::Duration};

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::{RunEventRow, Store, StoreError};

/// Wake-ups per deployment, in process.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Uuid>,
    closed: CancellationToken,
}

impl Default for EventBus {
    fn default() -> Self {
        Self { tx: broadcast::channel(1024).0, closed: CancellationToken::new() }
    }
}

impl EventBus {
    /// Tells subscribers of `deployment_id` that it has new events.
    pub fn publish(&self, deployment_id: Uuid) {
        // No subscriber is not an error.
        let _ = self.tx.send(deployment_id);
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription { rx: self.tx.subscribe(), closed: self.closed.clone() }
    }

    /// Ends every subscription (the server is stopping): event streams finish cleanly instead
    /// of holding the graceful shutdown until its grace period runs out.
    pub fn close(&self) {
        self.closed.cancel();
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<Uuid>,
    closed: CancellationToken,
}

impl Subscription {
    /// Waits until `deployment_id` may have new events (`true`) or the bus closes (`false`). A
    /// lagging receiver is woken too: it re-reads from the database, so nothing is lost.
    pub async fn changed(&mut self, deployment_id: Uuid) -> bool {
        loop {
            let received = tokio::select! {
                received = self.rx.recv() => received,
                () = self.closed.cancelled() => return false,
            };
            match received {
                Ok(id) if id == deployment_id => return true,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => {
                    self.closed.cancelled().await;
                    return false;
                }
            }
        }
    }
}

/// How many stored events one read takes.
const READ_BATCH: u32 = 200;

/// One deployment's events, as a subscriber reads them.
pub struct EventFeed {
    store: Store,
    deployment_id: Uuid,
}

impl EventFeed {
    /// The feed of a deployment the caller may read (`DeploymentService::events` checks).
    pub(crate) fn new(store: Store, deployment_id: Uuid) -> Self {
        Self { store, deployment_id }
    }

    /// The events after `last_event_id`, or without one from the latest run's first event:
    /// stored ones first, then new ones as the bus announces them, until the bus closes. The
    /// subscription is taken before the first read, so nothing stored in between is missed; a
    /// failed read is retried a second later.
    pub async fn follow(
        self,
        last_event_id: Option<i64>,
        bus: EventBus,
    ) -> Result<impl Stream<Item = RunEventRow> + Send + 'static, StoreError> {
        let Self { store, deployment_id } = self;
        let after = match last_event_id {
            Some(after) => after,
            None => match store.latest_run(deployment_id).await? {
                Some(run) => store.last_event_id_before_run(deployment_id, run.id).await?,
                None => 0,
            },
        };
        let state = (store, bus.subscribe(), after, VecDeque::<RunEventRow>::new());
        Ok(futures_util::stream::unfold(
            state,
            move |(store, mut subscription, mut after, mut buffer)| async move {
                loop {
                    if let Some(event) = buffer.pop_front() {
                        after = event.id;
                        return Some((event, (store, subscription, after, buffer)));
                    }
                    match store.events_after(deployment_id, after, READ_BATCH).await {
                        Ok(events) if !events.is_empty() => buffer.extend(events),
                        Ok(_) if subscription.changed(deployment_id).await => {}
                        // The server is stopping: end the stream cleanly.
                        Ok(_) => return None,
                        Err(err) => {
                            tracing::warn!(error = %err, "failed to read run events; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            },
        ))
    }
}
