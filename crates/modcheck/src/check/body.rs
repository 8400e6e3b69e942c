//! The blocks a provider's schema describes: a resource, data source or provider block, and
//! every argument and nested block in its body, against the schema of its type.

use std::collections::{BTreeMap, BTreeSet};

use hcl::edit::{
    Span,
    structure::{Attribute, Block, Structure},
};

use super::{
    Checker, Providers, SourceFile,
    meta::{Meta, is_meta_attribute, is_meta_block},
    providers::{provider_local_name, type_prefix},
    suggest::{suggest, suggest_among},
};
use crate::{
    literal,
    schema::{AttributeSchema, BlockSchema, Nesting, ProviderSchema, Type},
};

impl<'s> Checker<'s> {
    pub(super) fn resource(
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

    pub(super) fn provider(&mut self, file: &SourceFile, block: &Block, providers: &Providers<'s>) {
        let [name] = block.labels.as_slice() else { return };
        let Some(schema) = providers.get(name.as_str()).copied().flatten() else { return };
        self.report.blocks_checked += 1;
        let subject = format!("provider.{}", name.as_str());
        self.body(file, block, &schema.provider_config, &subject, Meta::Provider, schema);
    }

    /// Checks one block's body against its schema: every argument and nested block exists and
    /// is written as what it is, literal values fit, required ones are there, single blocks
    /// appear at most once, deprecated ones are reported.
    pub(super) fn body(
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
                    } else if self.schema_attribute(file, attr, schema, &path, &label) {
                        present.insert(name);
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
                    } else if let Some(key) =
                        self.schema_block(file, nested, schema, &path, provider, &mut single_seen)
                    {
                        present.insert(key);
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
        self.missing(file, block, schema, subject, &present, &label);
    }

    /// An argument of a body that is no meta-argument: one of the schema's (its value checked),
    /// a block written as an argument, or unknown. Returns whether the schema has the name.
    fn schema_attribute(
        &mut self,
        file: &SourceFile,
        attr: &Attribute,
        schema: &BlockSchema,
        path: &str,
        label: &str,
    ) -> bool {
        let name = attr.key.as_str();
        if let Some(attribute) = schema.attributes.get(name) {
            if let Some(note) = &attribute.deprecated {
                self.finding(file, attr.key.span(), path, format!("deprecated in {label}: {note}"));
            }
            if let Some(problem) = literal::mismatch(&attr.value, &attribute.ty) {
                self.finding(file, attr.key.span(), path, problem);
            } else if attribute.required && attr.value.is_null() {
                self.finding(
                    file,
                    attr.key.span(),
                    path,
                    "required argument set to null".to_owned(),
                );
            }
            true
        } else if schema.blocks.contains_key(name) {
            self.finding(
                file,
                attr.key.span(),
                path,
                format!("block used as an argument: {label} has a block \"{name}\" here, write `{name} {{ ... }}`, not `{name} = ...`"),
            );
            true
        } else {
            self.finding(
                file,
                attr.key.span(),
                path,
                format!(
                    "unsupported argument: {label} has no argument \"{name}\" here{}",
                    suggest(name, schema)
                ),
            );
            false
        }
    }

    /// A nested block of a body that is neither dynamic nor a meta-block: one of the schema's
    /// blocks (checked as that), an argument written as blocks, or unknown. Returns the
    /// schema's name for it, if it has one.
    fn schema_block<'b>(
        &mut self,
        file: &SourceFile,
        nested: &Block,
        schema: &'b BlockSchema,
        path: &str,
        provider: &ProviderSchema,
        single_seen: &mut BTreeSet<&'b str>,
    ) -> Option<&'b str> {
        let label = provider.label();
        let name = nested.ident.as_str();
        if let Some((key, nested_schema)) = schema.blocks.get_key_value(name) {
            if nested_schema.nesting == Nesting::Single && !single_seen.insert(key.as_str()) {
                self.finding(
                    file,
                    nested.ident.span(),
                    path,
                    format!("at most one \"{name}\" block is allowed here ({label})"),
                );
            }
            if !nested.labels.is_empty() {
                self.finding(
                    file,
                    nested.ident.span(),
                    path,
                    "a nested block takes no labels".to_owned(),
                );
            }
            if let Some(note) = &nested_schema.deprecated {
                self.finding(
                    file,
                    nested.ident.span(),
                    path,
                    format!("deprecated in {label}: {note}"),
                );
            }
            if let Some(inner) = &nested_schema.block {
                self.body(file, nested, inner, path, Meta::Nested, provider);
            }
            Some(key.as_str())
        } else if let Some((key, attribute)) = schema.attributes.get_key_value(name) {
            if let Some(object) = attribute_as_blocks(&attribute.ty) {
                self.object_body(file, nested, object, path, &label);
            } else {
                self.finding(
                    file,
                    nested.ident.span(),
                    path,
                    format!("argument used as a block: {label} has an argument \"{name}\" of type {} here, write `{name} = ...`, not `{name} {{ ... }}`", attribute.ty),
                );
            }
            Some(key.as_str())
        } else {
            self.finding(
                file,
                nested.ident.span(),
                path,
                format!(
                    "unsupported block type: {label} has no block \"{name}\" here{}",
                    suggest(name, schema)
                ),
            );
            None
        }
    }

    /// The schema's required arguments and blocks that a body leaves out.
    fn missing(
        &mut self,
        file: &SourceFile,
        block: &Block,
        schema: &BlockSchema,
        subject: &str,
        present: &BTreeSet<&str>,
        label: &str,
    ) {
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

    /// A block written for an argument of type list of objects, which Terraform accepts
    /// ("attributes as blocks", e.g. aws_route_table's `route`): its arguments are the object's
    /// attributes, any of which may be left out.
    pub(super) fn object_body(
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
}

/// `resource "aws_vpc" "this"` → `aws_vpc.this`; `data "aws_ami" "ubuntu"` → `data.aws_ami.ubuntu`.
pub(super) fn block_subject(kind: &str, ty: &str, name: &str) -> String {
    if kind == "data" { format!("data.{ty}.{name}") } else { format!("{ty}.{name}") }
}

/// The object type of an argument that may be written as blocks: Terraform accepts block
/// syntax for any argument whose type is a list or set of objects.
pub(super) fn attribute_as_blocks(ty: &Type) -> Option<&BTreeMap<String, AttributeSchema>> {
    match ty {
        Type::List { list } => match list.as_ref() {
            Type::Object { object } => Some(object),
            _ => None,
        },
        _ => None,
    }
}
