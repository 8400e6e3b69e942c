//! Run events reach subscribers through the database: the run worker stores each event, then
//! wakes subscribers of that deployment, who read the new rows themselves. The bus only carries
//! deployment ids, so a slow subscriber that misses wake-ups loses nothing (it reads from its
//! last event id), and a Postgres `LISTEN/NOTIFY` can carry the same ids between replicas.

use tokio::sync::broadcast;
use uuid::Uuid;

/// Wake-ups per deployment, in process.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Uuid>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self { tx: broadcast::channel(1024).0 }
    }
}

impl EventBus {
    /// Tells subscribers of `deployment_id` that it has new events.
    pub fn publish(&self, deployment_id: Uuid) {
        // No subscriber is not an error.
        let _ = self.tx.send(deployment_id);
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription { rx: self.tx.subscribe() }
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<Uuid>,
}

impl Subscription {
    /// Waits until `deployment_id` may have new events. A lagging receiver is woken too: it
    /// re-reads from the database, so nothing is lost.
    pub async fn changed(&mut self, deployment_id: Uuid) {
        loop {
            match self.rx.recv().await {
                Ok(id) if id == deployment_id => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}
