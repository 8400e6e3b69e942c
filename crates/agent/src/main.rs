//! `nim-agent`: makes itself non-dumpable, reads configuration, sets up logging, and runs the
//! [`Agent`] until SIGTERM.

use anyhow::Context;
use clap::Parser;
use nim_agent::{Agent, Args, Config, hardening, telemetry};

fn main() -> anyhow::Result<()> {
    // First, before the token and key are read: commands run as the agent's user, and must not
    // read them out of its memory, environment or descriptors.
    let not_dumpable = hardening::set_not_dumpable();
    let config = Config::load(Args::parse())?;
    telemetry::init(config.log_format);
    if let Err(err) = not_dumpable {
        tracing::warn!(
            error = %err,
            "failed to make the agent non-dumpable (prctl PR_SET_DUMPABLE): commands running as its user can read its /proc/<pid>/environ, mem and fd"
        );
    }
    // One thread: the agent's work is waiting on sockets, child processes and pipes (the little
    // blocking work, reading /proc and running nvidia-smi, goes to tokio's blocking pool). A
    // single thread uses one allocator arena instead of one per worker, which keeps its memory
    // flat under bursts of TLS connections (BENCHMARKS.md, "Agent footprint").
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async { Agent::build(config).await?.run_until_stopped().await })
}
