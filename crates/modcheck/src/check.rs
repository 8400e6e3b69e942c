//! The check itself: every `resource`, `data` and `provider` block of a module, and every block
//! nested in them, against the provider schema of the version the module pins; the
//! `required_providers` pins against the schema files' versions; and calls of local child
//! modules (such as `../shared/bootstrap`) against the child's variables, then the child itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::Context;
use hcl::edit::{
    Span,
    expr::{Expression, ObjectKey, TraversalOperator},
    structure::{Attribute, Block, Body, Structure},
};

use crate::{
    literal,
    schema::{AttributeSchema, BlockSchema, Nesting, Primitive, ProviderSchema, Schemas, Type},
    version::{Constraint, Version},
};

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

/// The kind of block whose body is being checked, for the meta-arguments it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    Resource,
    Data,
    Provider,
    Nested,
}

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

    /// Reads `terraform { required_providers { ... } }` and checks each entry's version pin
    /// against the schema file for its source. Returns local name → source.
    fn required_providers(&mut self, file: &SourceFile) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for terraform in file.body.get_blocks("terraform") {
            for required in terraform.body.get_blocks("required_providers") {
                for attr in required.body.attributes() {
                    let local = attr.key.as_str().to_owned();
                    let subject = format!("terraform.required_providers.{local}");
                    let Expression::Object(entry) = &attr.value else {
                        self.finding(
                            file,
                            attr.key.span(),
                            &subject,
                            "expected { source = \"...\", version = \"...\" }".to_owned(),
                        );
                        continue;
                    };
                    let mut source = format!("hashicorp/{local}");
                    let mut version = None;
                    for (key, value) in entry.iter() {
                        let name = match key {
                            ObjectKey::Ident(ident) => ident.as_str().to_owned(),
                            ObjectKey::Expression(Expression::String(s)) => s.value().clone(),
                            ObjectKey::Expression(_) => continue,
                        };
                        let text = match value.expr() {
                            Expression::String(s) => Some(s.value().clone()),
                            _ => None,
                        };
                        match (name.as_str(), text) {
                            ("source", Some(text)) => source = text,
                            ("version", Some(text)) => version = Some((text, key.span())),
                            _ => {}
                        }
                    }
                    let Some(schema) = self.schemas.by_source(&source) else {
                        self.finding(
                            file,
                            attr.key.span(),
                            &subject,
                            format!(
                                "no schema file for {source}: add its package to PACKAGES in crates/modcheck/schemas/extract.py and rerun it"
                            ),
                        );
                        found.push((local, source));
                        continue;
                    };
                    match version {
                        None => self.finding(
                            file,
                            attr.key.span(),
                            &subject,
                            format!(
                                "no version constraint: pin the major the schema is from (\"~> {}\")",
                                minor_of(&schema.version)
                            ),
                        ),
                        Some((text, span)) => {
                            let problem = Constraint::parse(&text).and_then(|constraint| {
                                Version::parse(&schema.version)
                                    .map(|version| constraint.pin_problem(&version))
                            });
                            let problem = match problem {
                                Ok(None) => None,
                                Ok(Some(problem)) => Some(format!(
                                    "version \"{text}\" {problem} (schema: {} from {} {})",
                                    schema.label(),
                                    schema.package,
                                    schema.package_version
                                )),
                                Err(err) => Some(format!("version \"{text}\": {err}")),
                            };
                            if let Some(problem) = problem {
                                self.finding(file, span, &subject, problem);
                            }
                        }
                    }
                    found.push((local, source));
                }
            }
        }
        found
    }

    /// Every provider local name the module's blocks use, resolved to a schema; a name missing
    /// from `required_providers` is reported once, where it is first used.
    fn resolve_providers(
        &mut self,
        files: &[SourceFile],
        sources: &BTreeMap<String, String>,
    ) -> Providers<'s> {
        let mut providers = BTreeMap::new();
        for file in files {
            for block in file.body.blocks() {
                let (local, subject) = match (block.ident.as_str(), block.labels.as_slice()) {
                    ("resource" | "data", [ty, name]) => (
                        provider_local_name(block).unwrap_or_else(|| type_prefix(ty.as_str())),
                        block_subject(block.ident.as_str(), ty.as_str(), name.as_str()),
                    ),
                    ("provider", [name]) => {
                        (name.as_str().to_owned(), format!("provider.{}", name.as_str()))
                    }
                    _ => continue,
                };
                if providers.contains_key(&local) {
                    continue;
                }
                let source = match sources.get(&local) {
                    Some(source) => source.clone(),
                    None => {
                        self.finding(
                            file,
                            block.ident.span(),
                            &subject,
                            format!(
                                "provider \"{local}\" is not in required_providers, so its version is not pinned"
                            ),
                        );
                        format!("hashicorp/{local}")
                    }
                };
                // A source without a schema file was reported at its required_providers entry.
                let schema = self.schemas.by_source(&source);
                if let Some(schema) = schema {
                    self.report.providers.insert(schema.label());
                }
                providers.insert(local, schema);
            }
        }
        providers
    }

    fn resource(
        &mut self,
        file: &SourceFile,
        block: &Block,
        meta: Meta,
        providers: &Providers<'s>,
    ) {
        let [ty, name] = block.labels.as_slice() else { return }; // Terraform's parser says so
        let subject = block_subject(block.ident.as_str(), ty.as_str(), name.as_str());
        let local = provider_local_name(block).unwrap_or_else(|| type_prefix(ty.as_str()));
        let Some(schema) = providers.get(&local).copied().flatten() else { return };
        let (types, kind) = match meta {
            Meta::Data => (&schema.data_sources, "data source"),
            _ => (&schema.resources, "resource"),
        };
        self.report.blocks_checked += 1;
        match types.get(ty.as_str()) {
            Some(block_schema) => {
                self.body(file, block, block_schema, &subject, meta, schema);
            }
            None => self.finding(
                file,
                block.ident.span(),
                &subject,
                format!(
                    "{} has no {kind} type \"{}\" in the schema file (misspelt? a type the modules newly use needs crates/modcheck/schemas/extract.py rerun)",
                    schema.label(),
                    ty.as_str()
                ),
            ),
        }
    }

    fn provider(&mut self, file: &SourceFile, block: &Block, providers: &Providers<'s>) {
        let [name] = block.labels.as_slice() else { return };
        let Some(schema) = providers.get(name.as_str()).copied().flatten() else { return };
        self.report.blocks_checked += 1;
        let subject = format!("provider.{}", name.as_str());
        self.body(file, block, &schema.provider_config, &subject, Meta::Provider, schema);
    }

    /// Checks one block's body against its schema: every argument and nested block exists and
    /// is written as what it is, literal values fit, required ones are there, single blocks
    /// appear at most once, deprecated ones are reported.
    fn body(
        &mut self,
        file: &SourceFile,
        block: &Block,
        schema: &BlockSchema,
        subject: &str,
        meta: Meta,
        provider: &ProviderSchema,
    ) {
        let label = provider.label();
        let mut present: BTreeSet<&str> = BTreeSet::new();
        let mut single_seen: BTreeSet<&str> = BTreeSet::new();
        let mut has_count = false;
        let mut has_for_each = false;
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let name = attr.key.as_str();
                    let path = format!("{subject}.{name}");
                    if is_meta_attribute(meta, name) {
                        has_count |= name == "count";
                        has_for_each |= name == "for_each";
                        self.meta_attribute(file, attr, &path);
                    } else if let Some(attribute) = schema.attributes.get(name) {
                        present.insert(name);
                        if let Some(note) = &attribute.deprecated {
                            self.finding(
                                file,
                                attr.key.span(),
                                &path,
                                format!("deprecated in {label}: {note}"),
                            );
                        }
                        if let Some(problem) = literal::mismatch(&attr.value, &attribute.ty) {
                            self.finding(file, attr.key.span(), &path, problem);
                        } else if attribute.required && attr.value.is_null() {
                            self.finding(
                                file,
                                attr.key.span(),
                                &path,
                                "required argument set to null".to_owned(),
                            );
                        }
                    } else if schema.blocks.contains_key(name) {
                        present.insert(name);
                        self.finding(
                            file,
                            attr.key.span(),
                            &path,
                            format!("block used as an argument: {label} has a block \"{name}\" here, write `{name} {{ ... }}`, not `{name} = ...`"),
                        );
                    } else {
                        self.finding(
                            file,
                            attr.key.span(),
                            &path,
                            format!(
                                "unsupported argument: {label} has no argument \"{name}\" here{}",
                                suggest(name, schema)
                            ),
                        );
                    }
                }
                Structure::Block(nested) => {
                    let name = nested.ident.as_str();
                    let path = format!("{subject}.{name}");
                    if name == "dynamic" {
                        if let Some(generated) =
                            self.dynamic(file, nested, schema, subject, provider)
                        {
                            present.insert(generated);
                        }
                    } else if is_meta_block(meta, name) {
                        self.meta_block(file, nested, &path, meta, schema);
                    } else if let Some((key, nested_schema)) = schema.blocks.get_key_value(name) {
                        present.insert(key.as_str());
                        if nested_schema.nesting == Nesting::Single
                            && !single_seen.insert(key.as_str())
                        {
                            self.finding(
                                file,
                                nested.ident.span(),
                                &path,
                                format!("at most one \"{name}\" block is allowed here ({label})"),
                            );
                        }
                        if !nested.labels.is_empty() {
                            self.finding(
                                file,
                                nested.ident.span(),
                                &path,
                                "a nested block takes no labels".to_owned(),
                            );
                        }
                        if let Some(note) = &nested_schema.deprecated {
                            self.finding(
                                file,
                                nested.ident.span(),
                                &path,
                                format!("deprecated in {label}: {note}"),
                            );
                        }
                        if let Some(inner) = &nested_schema.block {
                            self.body(file, nested, inner, &path, Meta::Nested, provider);
                        }
                    } else if let Some((key, attribute)) = schema.attributes.get_key_value(name) {
                        present.insert(key.as_str());
                        if let Some(object) = attribute_as_blocks(&attribute.ty) {
                            self.object_body(file, nested, object, &path, &label);
                        } else {
                            self.finding(
                                file,
                                nested.ident.span(),
                                &path,
                                format!("argument used as a block: {label} has an argument \"{name}\" of type {} here, write `{name} = ...`, not `{name} {{ ... }}`", attribute.ty),
                            );
                        }
                    } else {
                        self.finding(
                            file,
                            nested.ident.span(),
                            &path,
                            format!(
                                "unsupported block type: {label} has no block \"{name}\" here{}",
                                suggest(name, schema)
                            ),
                        );
                    }
                }
            }
        }
        if has_count && has_for_each {
            self.finding(
                file,
                block.ident.span(),
                subject,
                "count and for_each cannot both be set".to_owned(),
            );
        }
        for (name, attribute) in &schema.attributes {
            if attribute.required && !present.contains(name.as_str()) {
                self.finding(
                    file,
                    block.ident.span(),
                    &format!("{subject}.{name}"),
                    format!("required argument is missing ({label})"),
                );
            }
        }
        for (name, nested) in &schema.blocks {
            if nested.required && !present.contains(name.as_str()) {
                self.finding(
                    file,
                    block.ident.span(),
                    &format!("{subject}.{name}"),
                    format!("required block is missing ({label})"),
                );
            }
        }
    }

    /// `dynamic "name" { for_each = ..., iterator = ..., content { ... } }`: `name` must be a
    /// block of the schema, and `content` is checked as that block. Returns the block's name.
    fn dynamic<'b>(
        &mut self,
        file: &SourceFile,
        dynamic: &Block,
        schema: &'b BlockSchema,
        subject: &str,
        provider: &ProviderSchema,
    ) -> Option<&'b str> {
        let label = provider.label();
        let [name] = dynamic.labels.as_slice() else {
            self.finding(
                file,
                dynamic.ident.span(),
                &format!("{subject}.dynamic"),
                "a dynamic block takes one label: the block type it generates".to_owned(),
            );
            return None;
        };
        let name = name.as_str();
        let path = format!("{subject}.{name}");
        if let Some((key, attribute)) = schema.attributes.get_key_value(name)
            && let Some(object) = attribute_as_blocks(&attribute.ty)
        {
            self.dynamic_contents(file, dynamic, &path, |checker, content| {
                checker.object_body(file, content, object, &path, &label);
            });
            return Some(key.as_str());
        }
        let Some((key, nested_schema)) = schema.blocks.get_key_value(name) else {
            let problem = if schema.attributes.contains_key(name) {
                format!(
                    "dynamic blocks generate blocks, and \"{name}\" is an argument in {label}: assign it (e.g. with a for expression) instead"
                )
            } else {
                format!(
                    "unsupported block type: {label} has no block \"{name}\" here{}",
                    suggest(name, schema)
                )
            };
            self.finding(file, dynamic.ident.span(), &path, problem);
            return None;
        };
        self.dynamic_contents(file, dynamic, &path, |checker, content| {
            if let Some(inner_schema) = &nested_schema.block {
                checker.body(file, content, inner_schema, &path, Meta::Nested, provider);
            }
        });
        Some(key.as_str())
    }

    /// The parts of a dynamic block that are Terraform's own (for_each, iterator, labels, one
    /// content block); `content` checks the content block.
    fn dynamic_contents(
        &mut self,
        file: &SourceFile,
        dynamic: &Block,
        path: &str,
        mut content: impl FnMut(&mut Self, &Block),
    ) {
        let mut contents = 0;
        let mut has_for_each = false;
        for structure in dynamic.body.iter() {
            match structure {
                Structure::Attribute(attr) => match attr.key.as_str() {
                    "for_each" => has_for_each = true,
                    "iterator" | "labels" => {}
                    other => self.finding(
                        file,
                        attr.key.span(),
                        &format!("{path}.{other}"),
                        "unsupported argument in a dynamic block (for_each, iterator, labels and a content block); arguments of the generated block go in content".to_owned(),
                    ),
                },
                Structure::Block(inner) if inner.ident.as_str() == "content" => {
                    contents += 1;
                    content(self, inner);
                }
                Structure::Block(inner) => self.finding(
                    file,
                    inner.ident.span(),
                    &format!("{path}.{}", inner.ident.as_str()),
                    "unsupported block in a dynamic block: nested blocks of the generated block go in content".to_owned(),
                ),
            }
        }
        if !has_for_each {
            self.finding(
                file,
                dynamic.ident.span(),
                path,
                "a dynamic block needs for_each".to_owned(),
            );
        }
        if contents != 1 {
            self.finding(
                file,
                dynamic.ident.span(),
                path,
                "a dynamic block needs exactly one content block".to_owned(),
            );
        }
    }

    /// A block written for an argument of type list of objects, which Terraform accepts
    /// ("attributes as blocks", e.g. aws_route_table's `route`): its arguments are the object's
    /// attributes, any of which may be left out.
    fn object_body(
        &mut self,
        file: &SourceFile,
        block: &Block,
        object: &BTreeMap<String, AttributeSchema>,
        path: &str,
        label: &str,
    ) {
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let name = attr.key.as_str();
                    let sub = format!("{path}.{name}");
                    match object.get(name) {
                        Some(attribute) => {
                            if let Some(note) = &attribute.deprecated {
                                self.finding(
                                    file,
                                    attr.key.span(),
                                    &sub,
                                    format!("deprecated in {label}: {note}"),
                                );
                            }
                            if let Some(problem) = literal::mismatch(&attr.value, &attribute.ty) {
                                self.finding(file, attr.key.span(), &sub, problem);
                            }
                        }
                        None => {
                            let names = object.keys().map(String::as_str);
                            let problem = format!(
                                "unsupported argument: {label} has no argument \"{name}\" here{}",
                                suggest_among(name, names)
                            );
                            self.finding(file, attr.key.span(), &sub, problem);
                        }
                    }
                }
                Structure::Block(inner) => {
                    let name = inner.ident.as_str();
                    let sub = format!("{path}.{name}");
                    match object.get(name).and_then(|attribute| attribute_as_blocks(&attribute.ty))
                    {
                        Some(inner_object) => {
                            self.object_body(file, inner, inner_object, &sub, label)
                        }
                        None => {
                            let problem = format!(
                                "unsupported block type: {label} has no block \"{name}\" here"
                            );
                            self.finding(file, inner.ident.span(), &sub, problem);
                        }
                    }
                }
            }
        }
    }

    fn meta_attribute(&mut self, file: &SourceFile, attr: &Attribute, path: &str) {
        let problem = match attr.key.as_str() {
            "count" => literal::mismatch(&attr.value, &Type::Primitive(Primitive::Number)),
            "for_each" => match &attr.value {
                Expression::Array(_) => Some("for_each takes a map or a set of strings: wrap a list in toset()".to_owned()),
                Expression::Bool(_) | Expression::Number(_) | Expression::String(_) => {
                    Some("for_each takes a map or a set of strings".to_owned())
                }
                _ => None,
            },
            "depends_on" => match &attr.value {
                Expression::Array(items) => items
                    .iter()
                    .any(|item| !is_reference(item))
                    .then(|| "depends_on takes references (aws_vpc.this), not strings or values".to_owned()),
                _ => Some("depends_on takes a list of references".to_owned()),
            },
            "provider" => (!is_reference(&attr.value))
                .then(|| "provider takes a provider reference such as aws or aws.west, not a string".to_owned()),
            "version" => Some("deprecated: a version inside a provider block is ignored; pin it in required_providers".to_owned()),
            _ => None,
        };
        if let Some(problem) = problem {
            self.finding(file, attr.key.span(), path, problem);
        }
    }

    fn meta_block(
        &mut self,
        file: &SourceFile,
        block: &Block,
        path: &str,
        meta: Meta,
        schema: &BlockSchema,
    ) {
        match block.ident.as_str() {
            "lifecycle" => self.lifecycle(file, block, path, meta, schema),
            "provisioner" => self.provisioner(file, block, path),
            "connection" => {
                self.plain_block(file, block, path, CONNECTION_ARGUMENTS, &["host"], &[])
            }
            _ => {}
        }
    }

    fn lifecycle(
        &mut self,
        file: &SourceFile,
        block: &Block,
        path: &str,
        meta: Meta,
        schema: &BlockSchema,
    ) {
        let arguments: &[&str] = match meta {
            Meta::Resource => &[
                "create_before_destroy",
                "prevent_destroy",
                "ignore_changes",
                "replace_triggered_by",
            ],
            _ => &[],
        };
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let name = attr.key.as_str();
                    let sub = format!("{path}.{name}");
                    if !arguments.contains(&name) {
                        let problem = format!(
                            "unsupported argument in lifecycle (takes {})",
                            describe_list(arguments, &["precondition", "postcondition"])
                        );
                        self.finding(file, attr.key.span(), &sub, problem);
                        continue;
                    }
                    match name {
                        "create_before_destroy" | "prevent_destroy" => {
                            if let Some(problem) =
                                literal::mismatch(&attr.value, &Type::Primitive(Primitive::Bool))
                            {
                                self.finding(file, attr.key.span(), &sub, problem);
                            }
                        }
                        "ignore_changes" => self.ignore_changes(file, attr, &sub, schema),
                        _ => {}
                    }
                }
                Structure::Block(inner) => {
                    let name = inner.ident.as_str();
                    let sub = format!("{path}.{name}");
                    if name == "precondition" || name == "postcondition" {
                        self.plain_block(
                            file,
                            inner,
                            &sub,
                            &["condition", "error_message"],
                            &["condition", "error_message"],
                            &[],
                        );
                    } else {
                        self.finding(
                            file,
                            inner.ident.span(),
                            &sub,
                            "unsupported block in lifecycle (precondition, postcondition)"
                                .to_owned(),
                        );
                    }
                }
            }
        }
    }

    /// Each `ignore_changes` entry must name an argument or block of the resource (followed
    /// into nested blocks, e.g. `boot_disk[0].initialize_params[0].image`).
    fn ignore_changes(
        &mut self,
        file: &SourceFile,
        attr: &Attribute,
        path: &str,
        schema: &BlockSchema,
    ) {
        let entries: Vec<&Expression> = match &attr.value {
            Expression::Variable(var) if var.as_str() == "all" => return,
            Expression::Array(items) => items.iter().collect(),
            _ => {
                self.finding(
                    file,
                    attr.key.span(),
                    path,
                    "ignore_changes takes a list of argument names, or all".to_owned(),
                );
                return;
            }
        };
        for entry in entries {
            let Some(names) = reference_path(entry) else {
                self.finding(file, attr.key.span(), path, "ignore_changes entries are argument names (user_data, tags[\"Name\"]), not strings or values".to_owned());
                continue;
            };
            let mut current = schema;
            for name in names {
                if current.attributes.contains_key(&name) {
                    break; // into the argument's value: keys and indexes are not checked
                }
                match current.blocks.get(&name) {
                    Some(nested) => match &nested.block {
                        Some(inner) => current = inner,
                        None => break,
                    },
                    None => {
                        let problem = format!(
                            "ignore_changes names \"{name}\", which is no argument or block here{}",
                            suggest(&name, current)
                        );
                        self.finding(file, attr.key.span(), path, problem);
                        break;
                    }
                }
            }
        }
    }

    fn provisioner(&mut self, file: &SourceFile, block: &Block, path: &str) {
        let [kind] = block.labels.as_slice() else {
            self.finding(
                file,
                block.ident.span(),
                path,
                "a provisioner block takes one label: its type".to_owned(),
            );
            return;
        };
        let (arguments, required): (&[&str], &[&str]) = match kind.as_str() {
            "local-exec" => (
                &[
                    "command",
                    "working_dir",
                    "interpreter",
                    "environment",
                    "quiet",
                    "when",
                    "on_failure",
                ],
                &["command"],
            ),
            "remote-exec" => (&["inline", "script", "scripts", "when", "on_failure"], &[]),
            "file" => {
                (&["source", "content", "destination", "when", "on_failure"], &["destination"])
            }
            other => {
                self.finding(
                    file,
                    block.ident.span(),
                    &format!("{path}.{other}"),
                    "unknown provisioner type (Terraform has local-exec, remote-exec and file)"
                        .to_owned(),
                );
                return;
            }
        };
        let sub = format!("{path}.{}", kind.as_str());
        self.plain_block(file, block, &sub, arguments, required, &["connection"]);
        for connection in block.body.get_blocks("connection") {
            self.plain_block(
                file,
                connection,
                &format!("{sub}.connection"),
                CONNECTION_ARGUMENTS,
                &["host"],
                &[],
            );
        }
    }

    /// A block of Terraform's own (not a provider's): known argument names, required ones, and
    /// the nested blocks it may hold (checked by the caller).
    fn plain_block(
        &mut self,
        file: &SourceFile,
        block: &Block,
        path: &str,
        arguments: &[&str],
        required: &[&str],
        blocks: &[&str],
    ) {
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) if !arguments.contains(&attr.key.as_str()) => {
                    let problem = format!(
                        "unsupported argument (takes {})",
                        describe_list(arguments, blocks)
                    );
                    self.finding(
                        file,
                        attr.key.span(),
                        &format!("{path}.{}", attr.key.as_str()),
                        problem,
                    );
                }
                Structure::Block(inner) if !blocks.contains(&inner.ident.as_str()) => {
                    let problem =
                        format!("unsupported block (takes {})", describe_list(arguments, blocks));
                    self.finding(
                        file,
                        inner.ident.span(),
                        &format!("{path}.{}", inner.ident.as_str()),
                        problem,
                    );
                }
                _ => {}
            }
        }
        for name in required {
            if !block.body.has_attribute(name) {
                self.finding(
                    file,
                    block.ident.span(),
                    &format!("{path}.{name}"),
                    "required argument is missing".to_owned(),
                );
            }
        }
    }

    /// A call of a local module: its arguments must be the child's variables, the child's
    /// variables without a default must be given; then the child is checked too.
    fn module_call(
        &mut self,
        file: &SourceFile,
        block: &Block,
        dir: &Path,
        sources: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let [name] = block.labels.as_slice() else { return Ok(()) };
        let subject = format!("module.{}", name.as_str());
        let source = match block.body.get_attribute("source").map(|attr| &attr.value) {
            Some(Expression::String(source)) => source.value().clone(),
            _ => return Ok(()),
        };
        if !(source.starts_with("./") || source.starts_with("../")) {
            return Ok(()); // a registry or remote module: not checked here
        }
        let child = dir.join(&source);
        if !child.is_dir() {
            self.finding(
                file,
                block.ident.span(),
                &format!("{subject}.source"),
                format!("{} is not a directory", child.display()),
            );
            return Ok(());
        }
        let variables = variables_of(&child)?;
        let meta = ["source", "version", "count", "for_each", "depends_on", "providers"];
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str();
                    if !meta.contains(&key) && !variables.contains_key(key) {
                        let problem = format!(
                            "unsupported argument: {source} declares no variable \"{key}\""
                        );
                        self.finding(file, attr.key.span(), &format!("{subject}.{key}"), problem);
                    }
                }
                Structure::Block(inner) => {
                    let problem = "a module call takes arguments only, no blocks".to_owned();
                    self.finding(
                        file,
                        inner.ident.span(),
                        &format!("{subject}.{}", inner.ident.as_str()),
                        problem,
                    );
                }
            }
        }
        for (variable, required) in &variables {
            if *required && !block.body.has_attribute(variable) {
                let problem = format!(
                    "required argument is missing: {source} has variable \"{variable}\" without a default"
                );
                self.finding(file, block.ident.span(), &format!("{subject}.{variable}"), problem);
            }
        }
        self.module(&child, sources)
    }
}

/// The arguments of a `connection` block, as Terraform documents them.
const CONNECTION_ARGUMENTS: &[&str] = &[
    "type",
    "user",
    "password",
    "host",
    "port",
    "timeout",
    "script_path",
    "private_key",
    "certificate",
    "agent",
    "agent_identity",
    "host_key",
    "target_platform",
    "https",
    "insecure",
    "use_ntlm",
    "cacert",
    "bastion_host",
    "bastion_host_key",
    "bastion_port",
    "bastion_user",
    "bastion_password",
    "bastion_private_key",
    "bastion_certificate",
    "proxy_scheme",
    "proxy_host",
    "proxy_port",
    "proxy_user_name",
    "proxy_user_password",
];

/// Terraform's meta-arguments: what a block of this kind takes besides its schema.
fn is_meta_attribute(meta: Meta, name: &str) -> bool {
    match meta {
        Meta::Resource | Meta::Data => {
            matches!(name, "count" | "for_each" | "depends_on" | "provider")
        }
        Meta::Provider => matches!(name, "alias" | "version"),
        Meta::Nested => false,
    }
}

fn is_meta_block(meta: Meta, name: &str) -> bool {
    match meta {
        Meta::Resource => matches!(name, "lifecycle" | "provisioner" | "connection"),
        Meta::Data => name == "lifecycle",
        Meta::Provider | Meta::Nested => false,
    }
}

/// A child module's variables: name → whether it is required (has no default).
fn variables_of(dir: &Path) -> anyhow::Result<BTreeMap<String, bool>> {
    let mut ignored = Vec::new();
    let mut variables = BTreeMap::new();
    for file in load_files(dir, &mut ignored)? {
        for block in file.body.get_blocks("variable") {
            if let [name] = block.labels.as_slice() {
                variables.insert(name.as_str().to_owned(), !block.body.has_attribute("default"));
            }
        }
    }
    Ok(variables)
}

/// `resource "aws_vpc" "this"` → `aws_vpc.this`; `data "aws_ami" "ubuntu"` → `data.aws_ami.ubuntu`.
fn block_subject(kind: &str, ty: &str, name: &str) -> String {
    if kind == "data" { format!("data.{ty}.{name}") } else { format!("{ty}.{name}") }
}

/// Terraform's default: a resource type belongs to the provider named before its first `_`.
fn type_prefix(ty: &str) -> String {
    ty.split('_').next().unwrap_or(ty).to_owned()
}

/// The provider named by a `provider = aws.west` meta-argument: `aws`.
fn provider_local_name(block: &Block) -> Option<String> {
    let attr = block.body.get_attribute("provider")?;
    reference_path(&attr.value)?.into_iter().next()
}

fn is_reference(expr: &Expression) -> bool {
    matches!(expr, Expression::Variable(_) | Expression::Traversal(_))
}

/// The names of a reference, `a.b[0].c` → [a, b, c]; `None` if it is no reference.
fn reference_path(expr: &Expression) -> Option<Vec<String>> {
    match expr {
        Expression::Variable(var) => Some(vec![var.as_str().to_owned()]),
        Expression::Traversal(traversal) => {
            let mut names = reference_path(&traversal.expr)?;
            for operator in &traversal.operators {
                if let TraversalOperator::GetAttr(ident) = operator.value() {
                    names.push(ident.as_str().to_owned());
                }
            }
            Some(names)
        }
        _ => None,
    }
}

fn describe_list(arguments: &[&str], blocks: &[&str]) -> String {
    let mut all: Vec<String> = arguments.iter().map(|a| (*a).to_owned()).collect();
    all.extend(blocks.iter().map(|b| format!("{b} {{}}")));
    if all.is_empty() { "nothing".to_owned() } else { all.join(", ") }
}

/// The object type of an argument that may be written as blocks: Terraform accepts block
/// syntax for any argument whose type is a list or set of objects.
fn attribute_as_blocks(ty: &Type) -> Option<&BTreeMap<String, AttributeSchema>> {
    match ty {
        Type::List { list } => match list.as_ref() {
            Type::Object { object } => Some(object),
            _ => None,
        },
        _ => None,
    }
}

/// `; did you mean "x"?` for the closest name in the schema, if one is close.
fn suggest(name: &str, schema: &BlockSchema) -> String {
    suggest_among(name, schema.names())
}

fn suggest_among<'n>(name: &str, names: impl Iterator<Item = &'n str>) -> String {
    let best = names.map(|candidate| (edit_distance(name, candidate), candidate)).min();
    match best {
        Some((distance, candidate)) if distance <= 2.max(name.len() / 4) => {
            format!("; did you mean \"{candidate}\"?")
        }
        _ => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// `6.25.0` → `6.25`, for the suggested constraint.
fn minor_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("instance_typ", "instance_type"), 1);
        assert_eq!(edit_distance("volume_type", "volume_type"), 0);
        assert_eq!(edit_distance("abc", "xyz"), 3);
    }

    #[test]
    fn lines_come_from_the_parser_spans() {
        let text = "# c\nresource \"a_b\" \"c\" {\n  x = 1\n\n  inner {\n    y = \"z\"\n  }\n}\n";
        let body = hcl::edit::parser::parse_body(text).unwrap();
        let file = SourceFile {
            path: PathBuf::from("t.tf"),
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            body,
        };
        let block = file.body.blocks().next().unwrap();
        assert_eq!(file.line(block.ident.span()), Some(2));
        let x = block.body.get_attribute("x").unwrap();
        assert_eq!(file.line(x.key.span()), Some(3));
        let inner = block.body.get_blocks("inner").next().unwrap();
        assert_eq!(file.line(inner.ident.span()), Some(5));
        assert_eq!(file.line(inner.body.get_attribute("y").unwrap().key.span()), Some(6));
    }
}
