//! The run log's writer: one task per run receives what the run's steps report, stores each
//! event in order (the progress count with it), and wakes the event streams of this replica
//! and, through the store, of the others.

use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;
use wire::events::{LogEvent, ProgressEvent, RunEvent};

use crate::{
    services::{
        events::EventBus,
        terraform::{StepEvent, ui::Progress},
    },
    store::{RunRow, Store},
};

/// Something for the run log.
pub(super) enum Record {
    /// What the Terraform steps report.
    Step(StepEvent),
    /// An event of the worker's own.
    Event(RunEvent),
}

/// The sending half of a run's log.
#[derive(Clone)]
pub(super) struct Records(mpsc::UnboundedSender<Record>);

impl Records {
    pub(super) fn event(&self, event: RunEvent) {
        // The recorder outlives every sender; a send can only fail after it panicked.
        let _ = self.0.send(Record::Event(event));
    }

    /// A step of the worker's own in the run log.
    pub(super) fn log(&self, message: impl Into<String>) {
        self.event(RunEvent::Log(LogEvent::info(message)));
    }

    pub(super) fn step(&self, event: StepEvent) {
        let _ = self.0.send(Record::Step(event));
    }
}

/// Starts the recorder of `run`; it ends once every `Records` is dropped.
pub(super) fn spawn(store: Store, bus: EventBus, run: &RunRow) -> (Records, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
    let (run_id, deployment_id) = (run.id, run.deployment_id);
    let handle = tokio::spawn(async move {
        // One count for the whole run: the plan sets the total, the apply completes it.
        let mut progress = Progress::default();
        while let Some(record) = rx.recv().await {
            let events = events_of(record, &mut progress, &store, run_id).await;
            if events.is_empty() {
                continue;
            }
            for event in events {
                let data = event.data();
                if let Err(err) = store
                    .append_event(run_id, deployment_id, event.kind(), &data, crate::domain::now())
                    .await
                {
                    tracing::warn!(error = %err, "failed to record a run event");
                }
            }
            bus.publish(deployment_id);
            if let Err(err) = store.notify_events(deployment_id).await {
                tracing::warn!(error = %err, "failed to notify other replicas of run events");
            }
        }
    });
    (Records(tx), handle)
}

/// The events a record becomes (none for Terraform's version banner and blank lines, which say
/// nothing); a progress change is also stored on the run.
async fn events_of(
    record: Record,
    progress: &mut Progress,
    store: &Store,
    run_id: Uuid,
) -> Vec<RunEvent> {
    match record {
        Record::Event(event) => vec![event],
        Record::Step(StepEvent::Started(step)) => {
            vec![RunEvent::Log(LogEvent::info(format!("terraform {step}")))]
        }
        Record::Step(StepEvent::Note(note)) => vec![RunEvent::Log(LogEvent::info(note))],
        Record::Step(StepEvent::Ui(message)) => {
            if message.kind == "version" || message.message.trim().is_empty() {
                return Vec::new();
            }
            let mut events = vec![RunEvent::Log(message.log_event())];
            if let Some((done, total)) = progress.observe(&message) {
                let _ = store.record_progress(run_id, done as i64, total as i64).await;
                events.push(RunEvent::Progress(ProgressEvent { done, total }));
            }
            events
        }
    }
}
