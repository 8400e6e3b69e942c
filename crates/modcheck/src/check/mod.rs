//! The check itself: every `resource`, `data` and `provider` block of a module, and every block
//! nested in them, against the provider schema of the version the module pins; the
//! `required_providers` pins against the schema files' versions; and calls of local child
//! modules (such as `../shared/bootstrap`) against the child's variables, then the child itself.
//!
//! This file holds what the crate uses (`check_module`, `Finding`, `ModuleReport`), the loading
//! of a module's `.tf` files and the walk over one module's top-level blocks; the checks
//! themselves are in the files beside it.

mod body;
mod dynamic;
mod meta;
mod modules;
mod plain;
mod providers;
mod suggest;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::Context;
use hcl::edit::structure::Body;

use self::meta::Meta;
use crate::schema::{ProviderSchema, Schemas};

/// One problem found, printed as `file:line: subject: problem`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based; `None` only if the parser gave no position.
    pub line: Option<usize>,
    /// What the finding is about: `aws_instance.machine.root_block_device.volume_type`,
    /// `data.aws_ami.ubuntu.filter`, `provider.aws.region`, `terraform.required_providers.aws`,
    /// `module.bootstrap.agent_port`.
    pub subject: String,
    pub problem: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => {
                write!(f, "{}:{line}: {}: {}", self.file.display(), self.subject, self.problem)
            }
            None => write!(f, "{}: {}: {}", self.file.display(), self.subject, self.problem),
        }
    }
}

/// What checking one module (and the local child modules it calls) found.
#[derive(Debug, Default)]
pub struct ModuleReport {
    pub findings: Vec<Finding>,
    /// The provider schemas its blocks were checked against, e.g. `hashicorp/aws 6.25.0`.
    pub providers: BTreeSet<String>,
    /// How many resource, data and provider blocks were checked.
    pub blocks_checked: usize,
}

/// Checks the module in `dir` (every `*.tf` file in it) and the local modules it calls.
pub fn check_module(dir: &Path, schemas: &Schemas) -> anyhow::Result<ModuleReport> {
    let mut checker =
        Checker { schemas, report: ModuleReport::default(), visited: BTreeSet::new() };
    checker.module(dir, &BTreeMap::new())?;
    checker.report.findings.sort();
    checker.report.findings.dedup();
    Ok(checker.report)
}

/// A parsed `.tf` file and where its lines start (hcl-edit's spans are byte offsets).
struct SourceFile {
    path: PathBuf,
    line_starts: Vec<usize>,
    body: Body,
}

impl SourceFile {
    fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        span.map(|span| self.line_starts.partition_point(|&start| start <= span.start))
    }
}

/// The `.tf` files of a module, parsed; files that do not parse become findings.
fn load_files(dir: &Path, findings: &mut Vec<Finding>) -> anyhow::Result<Vec<SourceFile>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let path = entry.with_context(|| format!("failed to read {}", dir.display()))?.path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "tf") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let text = fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        match hcl::edit::parser::parse_body(&text) {
            Ok(body) => {
                let line_starts = std::iter::once(0)
                    .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                    .collect();
                files.push(SourceFile { path, line_starts, body });
            }
            Err(err) => findings.push(Finding {
                file: path,
                line: Some(err.location().line()),
                subject: "hcl".to_owned(),
                problem: format!("not valid HCL: {}", err.message()),
            }),
        }
    }
    Ok(files)
}

/// Provider local name → its schema (`None`: no schema file, reported at required_providers).
type Providers<'s> = BTreeMap<String, Option<&'s ProviderSchema>>;

struct Checker<'s> {
    schemas: &'s Schemas,
    report: ModuleReport,
    visited: BTreeSet<PathBuf>,
}

impl<'s> Checker<'s> {
    fn finding(
        &mut self,
        file: &SourceFile,
        span: Option<Range<usize>>,
        subject: &str,
        problem: String,
    ) {
        self.report.findings.push(Finding {
            file: file.path.clone(),
            line: file.line(span),
            subject: subject.to_owned(),
            problem,
        });
    }

    /// `inherited`: the provider sources of the calling module (local name → source), which a
    /// child module that declares no `required_providers` of its own uses.
    fn module(&mut self, dir: &Path, inherited: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        if !self.visited.insert(canonical) {
            return Ok(());
        }
        let files = load_files(dir, &mut self.report.findings)?;

        let mut sources = inherited.clone();
        for file in &files {
            for (local, source) in self.required_providers(file) {
                sources.insert(local, source);
            }
        }
        let providers = self.resolve_providers(&files, &sources);

        for file in &files {
            for block in file.body.blocks() {
                match block.ident.as_str() {
                    "resource" => self.resource(file, block, Meta::Resource, &providers),
                    "data" => self.resource(file, block, Meta::Data, &providers),
                    "provider" => self.provider(file, block, &providers),
                    "module" => self.module_call(file, block, dir, &sources)?,
                    _ => {} // terraform (above), variable, output, locals, moved, import, check
                }
            }
        }
        Ok(())
    }
}
