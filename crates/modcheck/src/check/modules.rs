//! Calls of local child modules (`source = "../shared/bootstrap"`): their arguments against
//! the child's variables, then the child module itself.

use std::{collections::BTreeMap, path::Path};

use hcl::edit::{
    Span,
    expr::Expression,
    structure::{Block, Structure},
};

use super::{Checker, SourceFile, load_files};

impl Checker<'_> {
    /// A call of a local module: its arguments must be the child's variables, the child's
    /// variables without a default must be given; then the child is checked too.
    pub(super) fn module_call(
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
