//! The provider schema facts modules are checked against: the committed JSON files that
//! `schemas/extract.py` writes from the prebuilt CDK for Terraform provider packages.

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The committed schema files, compiled in so the binary needs nothing beside it.
const EMBEDDED: [(&str, &str); 4] = [
    ("aws.json", include_str!("../schemas/aws.json")),
    ("azurerm.json", include_str!("../schemas/azurerm.json")),
    ("google.json", include_str!("../schemas/google.json")),
    ("tls.json", include_str!("../schemas/tls.json")),
];

/// One provider's schema, as far as the modules use it.
#[derive(Debug, Deserialize)]
pub struct ProviderSchema {
    /// The provider's local name, e.g. `aws`.
    pub provider: String,
    /// Its full source address, e.g. `registry.terraform.io/hashicorp/aws`.
    pub source: String,
    /// The provider version the package was generated from, e.g. `6.25.0`.
    pub version: String,
    /// The npm package the facts come from, and its version.
    pub package: String,
    pub package_version: String,
    pub provider_config: BlockSchema,
    pub resources: BTreeMap<String, BlockSchema>,
    pub data_sources: BTreeMap<String, BlockSchema>,
}

impl ProviderSchema {
    /// `hashicorp/aws 6.25.0`, for messages.
    pub fn label(&self) -> String {
        let short = self.source.strip_prefix("registry.terraform.io/").unwrap_or(&self.source);
        format!("{short} {}", self.version)
    }
}

/// The arguments and nested blocks of a resource, data source, provider or nested block.
#[derive(Debug, Default, Deserialize)]
pub struct BlockSchema {
    #[serde(default)]
    pub attributes: BTreeMap<String, AttributeSchema>,
    #[serde(default)]
    pub blocks: BTreeMap<String, NestedBlockSchema>,
}

impl BlockSchema {
    /// Every argument and block name, for "did you mean" suggestions.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.attributes.keys().chain(self.blocks.keys()).map(String::as_str)
    }
}

#[derive(Debug, Deserialize)]
pub struct AttributeSchema {
    #[serde(rename = "type")]
    pub ty: Type,
    pub required: bool,
    /// Set when the provider's description says the argument is deprecated.
    #[serde(default)]
    pub deprecated: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct NestedBlockSchema {
    pub nesting: Nesting,
    /// At least one such block must be written.
    pub required: bool,
    /// `None` for a block whose contents the package does not describe (not checked).
    pub block: Option<BlockSchema>,
    #[serde(default)]
    pub deprecated: Option<String>,
}

/// How many times a nested block may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nesting {
    /// At most once (the provider's `max_items = 1`).
    Single,
    /// Any number of times (a list or set of blocks).
    List,
}

/// An argument's type. Lists and sets are both `List`: the packages do not tell them apart.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Type {
    Primitive(Primitive),
    List { list: Box<Type> },
    Map { map: Box<Type> },
    Object { object: BTreeMap<String, AttributeSchema> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Primitive {
    String,
    Number,
    Bool,
    /// Any value (dynamic, or a type the package does not spell out).
    Any,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Primitive(Primitive::String) => f.write_str("string"),
            Type::Primitive(Primitive::Number) => f.write_str("number"),
            Type::Primitive(Primitive::Bool) => f.write_str("bool"),
            Type::Primitive(Primitive::Any) => f.write_str("any"),
            Type::List { list } => write!(f, "list({list})"),
            Type::Map { map } => write!(f, "map({map})"),
            Type::Object { object } => {
                let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                write!(f, "object({{{}}})", keys.join(", "))
            }
        }
    }
}

/// Every provider schema the checker knows.
#[derive(Debug)]
pub struct Schemas {
    providers: Vec<ProviderSchema>,
}

impl Schemas {
    /// The schema files committed in `crates/modcheck/schemas/`, as compiled in.
    pub fn embedded() -> anyhow::Result<Self> {
        let providers = EMBEDDED
            .iter()
            .map(|(name, text)| {
                serde_json::from_str(text)
                    .with_context(|| format!("the embedded schema file {name} is not valid"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { providers })
    }

    /// Every `*.json` schema file in `dir`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("failed to read the schema directory {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("no schema files (*.json) in {}", dir.display());
        }
        let providers = files
            .iter()
            .map(|path| {
                let text = fs::read_to_string(path)
                    .with_context(|| format!("failed to read {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a valid schema file", path.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { providers })
    }

    /// The schema of the provider with this source address (`hashicorp/aws` or the full
    /// `registry.terraform.io/hashicorp/aws`).
    pub fn by_source(&self, source: &str) -> Option<&ProviderSchema> {
        let wanted = normalize_source(source);
        self.providers.iter().find(|p| normalize_source(&p.source) == wanted)
    }

    pub fn providers(&self) -> impl Iterator<Item = &ProviderSchema> {
        self.providers.iter()
    }
}

/// A provider source address in full: `aws` and `hashicorp/aws` are both
/// `registry.terraform.io/hashicorp/aws`, as Terraform reads them.
pub fn normalize_source(source: &str) -> String {
    let source = source.trim().to_ascii_lowercase();
    match source.split('/').count() {
        1 => format!("registry.terraform.io/hashicorp/{source}"),
        2 => format!("registry.terraform.io/{source}"),
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_schemas_load_and_name_their_provider_versions() {
        let schemas = Schemas::embedded().unwrap();
        let aws = schemas.by_source("hashicorp/aws").unwrap();
        assert_eq!(aws.provider, "aws");
        assert!(aws.resources.contains_key("aws_instance"));
        assert!(schemas.by_source("registry.terraform.io/hashicorp/azurerm").is_some());
        assert!(schemas.by_source("google").is_some());
        assert!(schemas.by_source("hashicorp/nothing").is_none());
        let instance = &aws.resources["aws_instance"];
        assert_eq!(instance.blocks["root_block_device"].nesting, Nesting::Single);
        assert_eq!(instance.attributes["vpc_security_group_ids"].ty.to_string(), "list(string)");
    }
}
