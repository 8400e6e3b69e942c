//! Terraform's meta-arguments and meta-blocks (count, for_each, depends_on, provider,
//! lifecycle and its ignore_changes, provisioner, connection): what a block takes besides its
//! schema.

use hcl::edit::{
    Span,
    expr::{Expression, TraversalOperator},
    structure::{Attribute, Block, Structure},
};

use super::{
    Checker, SourceFile,
    plain::{CONNECTION_ARGUMENTS, describe_list},
    suggest::suggest,
};
use crate::{
    literal,
    schema::{BlockSchema, Primitive, Type},
};

/// The kind of block whose body is being checked, for the meta-arguments it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Meta {
    Resource,
    Data,
    Provider,
    Nested,
}

impl Checker<'_> {
    pub(super) fn meta_attribute(&mut self, file: &SourceFile, attr: &Attribute, path: &str) {
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

    pub(super) fn meta_block(
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
}

/// Terraform's meta-arguments: what a block of this kind takes besides its schema.
pub(super) fn is_meta_attribute(meta: Meta, name: &str) -> bool {
    match meta {
        Meta::Resource | Meta::Data => {
            matches!(name, "count" | "for_each" | "depends_on" | "provider")
        }
        Meta::Provider => matches!(name, "alias" | "version"),
        Meta::Nested => false,
    }
}

pub(super) fn is_meta_block(meta: Meta, name: &str) -> bool {
    match meta {
        Meta::Resource => matches!(name, "lifecycle" | "provisioner" | "connection"),
        Meta::Data => name == "lifecycle",
        Meta::Provider | Meta::Nested => false,
    }
}

fn is_reference(expr: &Expression) -> bool {
    matches!(expr, Expression::Variable(_) | Expression::Traversal(_))
}

/// The names of a reference, `a.b[0].c` → [a, b, c]; `None` if it is no reference.
pub(super) fn reference_path(expr: &Expression) -> Option<Vec<String>> {
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
