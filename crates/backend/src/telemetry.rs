//! Structured logging: `RUST_LOG` filters, `NIM_LOG_FORMAT` picks text or JSON lines, always on
//! stderr so stdout stays free for anything a caller wants to pipe.
//!
//! Cheap on the request path: lines are formatted on the calling thread but written by a
//! background thread (a request never waits on a slow terminal, file or journal), colour codes
//! only go to a terminal, and the per-request lines are `debug` (errors and 5xx answers stay at
//! `warn`/`error` with their request id).

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (as in tests) is a no-op. Keep the guard for the
/// life of the process: dropping it flushes the lines not yet written.
pub fn init(format: LogFormat) -> Option<WorkerGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Not lossy: when the writer falls behind (a blocked pipe), logging waits rather than
    // dropping lines an operator may need.
    let (writer, guard) = NonBlockingBuilder::default().lossy(false).finish(std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(writer))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
    };
    installed.is_ok().then_some(guard)
}
