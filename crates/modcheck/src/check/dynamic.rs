//! `dynamic` blocks: the block type one generates must be in the schema, its `content` is
//! checked as that block, and the rest of it is Terraform's own.

use hcl::edit::{
    Span,
    structure::{Block, Structure},
};

use super::{Checker, SourceFile, body::attribute_as_blocks, meta::Meta, suggest::suggest};
use crate::schema::{BlockSchema, ProviderSchema};

impl Checker<'_> {
    /// `dynamic "name" { for_each = ..., iterator = ..., content { ... } }`: `name` must be a
    /// block of the schema, and `content` is checked as that block. Returns the block's name.
    pub(super) fn dynamic<'b>(
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
}
