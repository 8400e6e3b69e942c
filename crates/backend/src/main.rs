//! `nim-backend`: reads configuration, sets up logging, and runs the [`Application`] (or backs
//! up / restores its data).

use clap::Parser;
use nim_backend::{Application, Config, backup, config::Operation, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before parsing, so `.env` values reach clap's `env` fallbacks.
    let dotenv = dotenvy::dotenv();
    let config = Config::parse();
    // Held to the end of `main`: dropping it flushes the log lines not yet written.
    let _log_writer = telemetry::init(config.log_format);
    match dotenv {
        Ok(path) => tracing::info!(path = %path.display(), "read .env"),
        Err(err) if err.not_found() => {}
        Err(err) => anyhow::bail!("failed to read .env: {err}"),
    }
    match &config.operation {
        None => Application::build(config).await?.run_until_stopped().await,
        Some(Operation::Backup { path }) => backup::backup(&config, path).await,
        Some(Operation::Restore { path, force }) => backup::restore(&config, path, *force).await,
    }
}
