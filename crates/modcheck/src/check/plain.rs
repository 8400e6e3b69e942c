//! Blocks of Terraform's own, with fixed arguments instead of a provider's schema:
//! provisioner, connection, precondition and postcondition.

use hcl::edit::{
    Span,
    structure::{Block, Structure},
};

use super::{Checker, SourceFile};

impl Checker<'_> {
    pub(super) fn provisioner(&mut self, file: &SourceFile, block: &Block, path: &str) {
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
    pub(super) fn plain_block(
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
}

/// The arguments of a `connection` block, as Terraform documents them.
pub(super) const CONNECTION_ARGUMENTS: &[&str] = &[
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

pub(super) fn describe_list(arguments: &[&str], blocks: &[&str]) -> String {
    let mut all: Vec<String> = arguments.iter().map(|a| (*a).to_owned()).collect();
    all.extend(blocks.iter().map(|b| format!("{b} {{}}")));
    if all.is_empty() { "nothing".to_owned() } else { all.join(", ") }
}
