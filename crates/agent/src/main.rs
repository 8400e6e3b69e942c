//! `nim-agent`: reads configuration, sets up logging, and runs the [`Agent`] until SIGTERM.

use anyhow::Context;
use clap::Parser;
use nim_agent::{Agent, Args, Config, telemetry};

fn main() -> anyhow::Result<()> {
    let config = Config::load(Args::parse())?;
    telemetry::init(config.log_format);
    // Two workers are plenty for a daemon whose work is waiting on child processes and pipes,
    // and keep it lean on a many-core machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async { Agent::build(config).await?.run_until_stopped().await })
}
