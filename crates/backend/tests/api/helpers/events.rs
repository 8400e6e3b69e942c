//! A deployment's event stream, read with what `nimctl` reads it with: `eventsource-stream`
//! for the SSE framing and [`StreamedEvent`] for each event.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use wire::events::StreamedEvent;

/// Reads a `GET /infrastructure/{id}/events` response until `run_finished`; returns every event
/// up to and including it.
pub async fn read_events_until_finished(response: reqwest::Response) -> Vec<StreamedEvent> {
    let stream = response.bytes_stream().eventsource();
    futures_util::pin_mut!(stream);
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("events stalled after {events:#?}"));
        let Some(event) = next else { break };
        let event = event.expect("event stream broke");
        let streamed = StreamedEvent::parse(&event.id, &event.event, &event.data)
            .unwrap_or_else(|err| panic!("not an event of the backend's ({err}): {event:?}"));
        let finished = streamed.kind == "run_finished";
        events.push(streamed);
        if finished {
            return events;
        }
    }
    panic!("no run_finished event; got {events:#?}");
}
