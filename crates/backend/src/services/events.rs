//! Run events reach subscribers through the database: the run worker stores each event, then
//! wakes subscribers of that deployment, who read the new rows themselves. The bus only carries
//! deployment ids, so a slow subscriber that misses wake-ups loses nothing (it reads from its
//! last event id), and a Postgres `LISTEN/NOTIFY` can carry the same ids between replicas.

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
