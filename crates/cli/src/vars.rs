//! Module variables from the command line: `--var-file` (JSON or `.tfvars`), `--count` and
//! `--var KEY=VALUE`, read with the types the module declares (`GET /providers`), so a string
//! stays text while `--var disk_size_gb=100` is a number and a list can be written as JSON or
//! HCL. The server checks every value again; this only turns text into the value meant.

use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value};
use wire::deployments::{ProviderView, VariableView};

/// The variables for `POST /provision`: files first (in order), then `count`, then `vars`.
pub(crate) fn collect(
    provider: &ProviderView,
    files: &[impl AsRef<Path>],
    count: Option<u32>,
    vars: &[String],
) -> anyhow::Result<Map<String, Value>> {
    let mut variables = Map::new();
    for file in files {
        variables.extend(read_file(file.as_ref())?);
    }
    if let Some(count) = count {
        let variable = lookup(provider, "machine_count")?;
        variables.insert(variable.name.clone(), Value::from(count));
    }
    for var in vars {
        let (name, text) =
            var.split_once('=').with_context(|| format!("--var {var:?} is not KEY=VALUE"))?;
        let variable = lookup(provider, name.trim())?;
        variables.insert(variable.name.clone(), value(variable, text)?);
    }
    Ok(variables)
}

fn lookup<'a>(provider: &'a ProviderView, name: &str) -> anyhow::Result<&'a VariableView> {
    let variable = provider.variables.iter().find(|v| v.name == name);
    match variable {
        Some(variable) if variable.backend_filled => anyhow::bail!(
            "`{name}` is set by nim-backend itself and cannot be given (see `nimctl providers {}`)",
            provider.name
        ),
        Some(variable) => Ok(variable),
        None => {
            let known: Vec<_> = provider.settable().map(|v| v.name.as_str()).collect();
            anyhow::bail!(
                "the {} module has no variable `{name}`; it takes: {}",
                provider.name,
                known.join(", ")
            )
        }
    }
}

/// `text` as a value of `variable`'s type.
fn value(variable: &VariableView, text: &str) -> anyhow::Result<Value> {
    if variable.ty == "string" {
        return Ok(Value::String(text.to_owned()));
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(value);
    }
    // HCL syntax, as in a .tfvars file: `["a", "b"]`, `{ env = "prod" }`, `true`.
    // A bare word is an HCL variable reference, which comes back as a `${...}` template: that is
    // not a value.
    let parsed = hcl::from_str::<Map<String, Value>>(&format!("value = {text}\n"))
        .ok()
        .and_then(|mut map| map.remove("value"))
        .filter(|value| !value.is_string() && !value.to_string().contains("${"));
    match parsed {
        Some(value) => Ok(value),
        // `any`-typed variables take plain text as a string, as Terraform does.
        None if variable.ty == "any" => Ok(Value::String(text.to_owned())),
        None => anyhow::bail!(
            "--var {}={text}: not a value of type {} (write it as JSON or HCL, e.g. {})",
            variable.name,
            variable.ty,
            example(&variable.ty)
        ),
    }
}

fn example(ty: &str) -> &'static str {
    match ty {
        "number" => "10",
        "bool" => "true",
        ty if ty.starts_with("list") || ty.starts_with("set") || ty.starts_with("tuple") => {
            r#"["a","b"]"#
        }
        _ => r#"{"key":"value"}"#,
    }
}

fn read_file(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read --var-file {}", path.display()))?;
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    if is_json {
        serde_json::from_str::<Map<String, Value>>(&text)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} is not a JSON object of variables", path.display()))
    } else {
        hcl::from_str::<Map<String, Value>>(&text)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} is not a file of `name = value` lines", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn provider() -> ProviderView {
        let var = |name: &str, ty: &str, backend_filled: bool| VariableView {
            name: name.into(),
            ty: ty.into(),
            default: None,
            description: None,
            sensitive: false,
            nullable: false,
            required: false,
            backend_filled,
        };
        ProviderView {
            name: "aws".into(),
            variables: vec![
                var("machine_count", "number", false),
                var("region", "string", false),
                var("disk_size_gb", "number", false),
                var("allowed_cidrs", "list(string)", false),
                var("tags", "map(string)", false),
                var("agent_token", "string", true),
            ],
            outputs: vec![],
        }
    }

    fn vars(args: &[&str]) -> anyhow::Result<Map<String, Value>> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        collect(&provider(), &[] as &[&Path], None, &args)
    }

    #[test]
    fn values_are_read_with_the_variables_declared_types() {
        let got = vars(&[
            "region=123",
            "disk_size_gb=100",
            r#"allowed_cidrs=["203.0.113.7/32"]"#,
            r#"tags={ team = "ml", env = "prod" }"#,
        ])
        .unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"region": "123", "disk_size_gb": 100,
                "allowed_cidrs": ["203.0.113.7/32"], "tags": {"team": "ml", "env": "prod"}})
        );
        // A value may itself contain `=`.
        assert_eq!(vars(&["region=a=b"]).unwrap()["region"], "a=b");
    }

    #[test]
    fn unknown_backend_filled_and_malformed_vars_are_refused_with_a_reason() {
        let err = vars(&["regoin=x"]).unwrap_err().to_string();
        assert!(err.contains("no variable `regoin`") && err.contains("region"), "{err}");
        assert!(!err.contains("agent_token"), "backend-filled variables are not offered: {err}");
        let err = vars(&["agent_token=x"]).unwrap_err().to_string();
        assert!(err.contains("set by nim-backend"), "{err}");
        let err = vars(&["disk_size_gb=lots"]).unwrap_err().to_string();
        assert!(err.contains("type number"), "{err}");
        assert!(vars(&["region"]).unwrap_err().to_string().contains("KEY=VALUE"));
    }

    #[test]
    fn files_come_first_then_count_then_vars() {
        let dir = tempfile::tempdir().unwrap();
        let tfvars = dir.path().join("prod.tfvars");
        std::fs::write(&tfvars, "region = \"eu-west-1\"\nmachine_count = 5\ndisk_size_gb = 50\n")
            .unwrap();
        let json = dir.path().join("more.json");
        std::fs::write(&json, r#"{"disk_size_gb": 80}"#).unwrap();
        let got =
            collect(&provider(), &[&tfvars, &json], Some(2), &["region=us-east-1".into()]).unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"region": "us-east-1", "machine_count": 2, "disk_size_gb": 80})
        );
        std::fs::write(&json, "[1]").unwrap();
        let err = collect(&provider(), &[&json], None, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("not a JSON object"), "{err:#}");
    }
}
