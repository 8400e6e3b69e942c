//! The providers a module uses: its `required_providers` pins against the schema files'
//! versions, and the schema each block's provider local name resolves to.

use std::{collections::BTreeMap, ops::Range};

use hcl::edit::{
    Span,
    expr::{Expression, ObjectKey},
    structure::{Attribute, Block},
};

use super::{Checker, Providers, SourceFile, body::block_subject, meta::reference_path};
use crate::{
    schema::ProviderSchema,
    version::{Constraint, Version},
};

impl<'s> Checker<'s> {
    /// Reads `terraform { required_providers { ... } }` and checks each entry's version pin
    /// against the schema file for its source. Returns local name → source.
    pub(super) fn required_providers(&mut self, file: &SourceFile) -> Vec<(String, String)> {
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
                    self.version_pin(file, attr, &subject, schema, version);
                    found.push((local, source));
                }
            }
        }
        found
    }

    /// The version constraint of one `required_providers` entry, against the version its
    /// schema file is from.
    fn version_pin(
        &mut self,
        file: &SourceFile,
        attr: &Attribute,
        subject: &str,
        schema: &ProviderSchema,
        version: Option<(String, Option<Range<usize>>)>,
    ) {
        match version {
            None => self.finding(
                file,
                attr.key.span(),
                subject,
                format!(
                    "no version constraint: pin the major the schema is from (\"~> {}\")",
                    minor_of(&schema.version)
                ),
            ),
            Some((text, span)) => {
                let problem = Constraint::parse(&text).and_then(|constraint| {
                    Version::parse(&schema.version).map(|version| constraint.pin_problem(&version))
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
                    self.finding(file, span, subject, problem);
                }
            }
        }
    }

    /// Every provider local name the module's blocks use, resolved to a schema; a name missing
    /// from `required_providers` is reported once, where it is first used.
    pub(super) fn resolve_providers(
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
}

/// Terraform's default: a resource type belongs to the provider named before its first `_`.
pub(super) fn type_prefix(ty: &str) -> String {
    ty.split('_').next().unwrap_or(ty).to_owned()
}

/// The provider named by a `provider = aws.west` meta-argument: `aws`.
pub(super) fn provider_local_name(block: &Block) -> Option<String> {
    let attr = block.body.get_attribute("provider")?;
    reference_path(&attr.value)?.into_iter().next()
}

/// `6.25.0` → `6.25`, for the suggested constraint.
fn minor_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}
