//! `nim-modcheck`: checks terraform/{aws,azure,gcp} against the provider schemas, prints each
//! finding as `file:line: subject: problem`, exits 1 on any.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use modcheck::{Schemas, check_module};

/// Check Terraform modules against their providers' schemas (from the prebuilt CDK for
/// Terraform packages).
#[derive(Debug, Parser)]
#[command(name = "nim-modcheck", version)]
struct Args {
    /// The modules folder.
    #[arg(long, default_value = "terraform")]
    modules_dir: PathBuf,
    /// Schema files to use instead of the compiled-in ones (every *.json in the folder).
    #[arg(long)]
    schemas: Option<PathBuf>,
    /// The modules to check (folder names under --modules-dir).
    #[arg(default_values_t = ["aws".to_owned(), "azure".to_owned(), "gcp".to_owned()])]
    modules: Vec<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("nim-modcheck: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether every module is clean.
fn run(args: Args) -> anyhow::Result<bool> {
    let schemas = match &args.schemas {
        Some(dir) => Schemas::from_dir(dir)?,
        None => Schemas::embedded()?,
    };
    let mut total = 0;
    for name in &args.modules {
        let dir = args.modules_dir.join(name);
        anyhow::ensure!(dir.is_dir(), "{} is not a module folder", dir.display());
        let report = check_module(&dir, &schemas)
            .with_context(|| format!("failed to check {}", dir.display()))?;
        for finding in &report.findings {
            println!("{finding}");
        }
        total += report.findings.len();
        let providers: Vec<&str> = report.providers.iter().map(String::as_str).collect();
        eprintln!(
            "nim-modcheck: {}: {} blocks checked against {}: {}",
            dir.display(),
            report.blocks_checked,
            if providers.is_empty() {
                "no provider schema".to_owned()
            } else {
                providers.join(", ")
            },
            match report.findings.len() {
                0 => "clean".to_owned(),
                1 => "1 finding".to_owned(),
                n => format!("{n} findings"),
            }
        );
    }
    Ok(total == 0)
}
