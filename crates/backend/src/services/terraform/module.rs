//! The module catalog: every `<modules dir>/<provider>/*.tf`, parsed at start. It knows each
//! module's variables and outputs, refuses modules that break the contract from the design brief,
//! and validates a caller's variables before anything runs.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use hcl::{Block, Body, Expression};
use serde_json::{Map, Value};
use wire::FieldError;

use super::{
    types::TypeConstraint,
    validation::{Validation, Verdict},
};

/// Variables every module must declare; the backend fills them, callers may not.
pub const CONTRACT_VARIABLES: [&str; 6] = [
    "deployment_id",
    "machine_count",
    "agent_token",
    "agent_tls_cert",
    "agent_tls_key",
    "agent_port",
];
/// Contract variables that carry secrets and must be declared `sensitive = true`.
pub const SENSITIVE_VARIABLES: [&str; 3] = ["agent_token", "agent_tls_cert", "agent_tls_key"];
/// Variables the backend fills when a module declares them (beyond the contract): how machines
/// get the agent (`agent_download_url` + `agent_sha256`), and for local sandboxes their subnet,
/// host uids and disks.
pub const BACKEND_VARIABLES: [&str; 10] = [
    "deployment_id",
    "agent_token",
    "agent_tls_cert",
    "agent_tls_key",
    "agent_port",
    "agent_download_url",
    "agent_sha256",
    "machine_network",
    "machine_uid_base",
    "machines_root",
];

/// A module variable as declared.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub ty: TypeConstraint,
    pub default: Option<Value>,
    pub description: Option<String>,
    pub sensitive: bool,
    pub nullable: bool,
    /// Its `validation` blocks, checked when a request arrives.
    pub validations: Vec<Validation>,
}

impl Variable {
    /// The backend sets this one; callers cannot.
    pub fn backend_filled(&self) -> bool {
        BACKEND_VARIABLES.contains(&self.name.as_str())
    }

    /// The caller must give a value.
    pub fn required(&self) -> bool {
        self.default.is_none() && !self.backend_filled()
    }

    /// The module's own `validation` blocks on a value of the right type: the first that fails
    /// answers with its `error_message`. One this backend cannot evaluate is Terraform's to
    /// judge at plan time (logged at debug, never guessed).
    fn check_validations(&self, value: &Value, field: &str) -> Option<FieldError> {
        if !self.ty.passes_values_unchanged() {
            return None;
        }
        for validation in &self.validations {
            match validation.check(&self.name, value) {
                Verdict::Holds => {}
                Verdict::Fails => return Some(FieldError::new(field, &validation.error_message)),
                // The reason may quote the value: never for a sensitive variable.
                Verdict::LeftToTerraform(_) if self.sensitive => {
                    tracing::debug!(variable = %self.name, "validation left to terraform");
                }
                Verdict::LeftToTerraform(why) => {
                    tracing::debug!(variable = %self.name, %why, "validation left to terraform");
                }
            }
        }
        None
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub description: Option<String>,
    pub sensitive: bool,
    /// How its value is built, as far as the contract needs to know.
    pub shape: OutputShape,
}

/// The shape of an output's value expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputShape {
    /// `[]`.
    EmptyList,
    /// `[for … : { key = … }]`: the keys of the object each item is.
    ListOfObjects(Vec<String>),
    Other,
}

impl OutputShape {
    fn of(expr: Option<&Expression>) -> Self {
        match expr {
            Some(Expression::Array(items)) if items.is_empty() => Self::EmptyList,
            Some(Expression::ForExpr(for_expr)) if for_expr.key_expr.is_none() => {
                match &for_expr.value_expr {
                    Expression::Object(object) => {
                        Self::ListOfObjects(object.keys().filter_map(object_key).collect())
                    }
                    _ => Self::Other,
                }
            }
            _ => Self::Other,
        }
    }
}

fn object_key(key: &hcl::ObjectKey) -> Option<String> {
    match key {
        hcl::ObjectKey::Identifier(name) => Some(name.to_string()),
        hcl::ObjectKey::Expression(Expression::String(name)) => Some(name.clone()),
        _ => None,
    }
}

/// What each item of a module's `machines` output must say. `resource` is the machine's
/// Terraform resource address (e.g. `aws_instance.machine[0]`): what a replace passes to
/// `terraform plan -replace`.
pub const MACHINE_OUTPUT_KEYS: &[&str] = &["name", "public_ip", "private_ip", "resource"];

/// One provider module.
#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
    pub dir: PathBuf,
    pub variables: BTreeMap<String, Variable>,
    pub outputs: BTreeMap<String, Output>,
}

/// Every module found in the modules directory, by provider name.
#[derive(Debug, Clone, Default)]
pub struct ModuleCatalog {
    root: PathBuf,
    modules: BTreeMap<String, Module>,
}

impl ModuleCatalog {
    /// Loads every module under `root`; any module that fails to parse or breaks the contract
    /// fails the whole load with a message naming the file and what is wrong.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let entries = fs::read_dir(root).with_context(|| {
            format!("failed to read the modules directory {} (NIM_MODULES_DIR)", root.display())
        })?;
        let mut modules = BTreeMap::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("failed to read {}", root.display()))?;
            let dir = entry.path();
            if !dir.is_dir() || tf_files(&dir)?.is_empty() {
                continue; // shared templates and other non-module folders
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_valid_provider_name(&name) {
                bail!(
                    "module folder {} must be named with lowercase letters, digits, - and _",
                    dir.display()
                );
            }
            let module = Module::load(&name, &dir)?;
            modules.insert(name, module);
        }
        if modules.is_empty() {
            bail!(
                "no modules found in {} (NIM_MODULES_DIR): expected <provider>/*.tf",
                root.display()
            );
        }
        Ok(Self { root: root.to_owned(), modules })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn get(&self, provider: &str) -> Option<&Module> {
        self.modules.get(provider)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    pub fn modules(&self) -> impl Iterator<Item = &Module> {
        self.modules.values()
    }
}

fn is_valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn tf_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let path = entry.with_context(|| format!("failed to read {}", dir.display()))?.path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "tf") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl Module {
    fn load(name: &str, dir: &Path) -> anyhow::Result<Self> {
        let mut variables = BTreeMap::new();
        let mut outputs = BTreeMap::new();
        for file in tf_files(dir)? {
            let text = fs::read_to_string(&file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            let body: Body = hcl::from_str(&text)
                .with_context(|| format!("{} is not valid HCL", file.display()))?;
            for block in body.blocks() {
                let label = || -> anyhow::Result<String> {
                    match block.labels() {
                        [label] => Ok(label.as_str().to_owned()),
                        _ => bail!(
                            "{}: a `{}` block needs one name",
                            file.display(),
                            block.identifier()
                        ),
                    }
                };
                match block.identifier() {
                    "variable" => {
                        let variable = parse_variable(label()?, block).with_context(|| {
                            format!(
                                "{}: variable \"{}\"",
                                file.display(),
                                label().unwrap_or_default()
                            )
                        })?;
                        variables.insert(variable.name.clone(), variable);
                    }
                    "output" => {
                        let name = label()?;
                        outputs.insert(
                            name.clone(),
                            Output {
                                name,
                                description: string_attribute(block, "description"),
                                sensitive: bool_attribute(block, "sensitive").unwrap_or(false),
                                shape: OutputShape::of(attribute(block, "value")),
                            },
                        );
                    }
                    _ => {}
                }
            }
        }
        let module = Self { name: name.to_owned(), dir: dir.to_owned(), variables, outputs };
        module.check_contract()?;
        Ok(module)
    }

    /// The module contract from the design brief.
    fn check_contract(&self) -> anyhow::Result<()> {
        let dir = self.dir.display();
        let missing: Vec<_> =
            CONTRACT_VARIABLES.iter().filter(|name| !self.variables.contains_key(**name)).collect();
        if !missing.is_empty() {
            bail!(
                "module {dir} breaks the module contract: it does not declare the variable(s) {missing:?}"
            );
        }
        for name in SENSITIVE_VARIABLES {
            if !self.variables[name].sensitive {
                bail!(
                    "module {dir} breaks the module contract: variable \"{name}\" must be `sensitive = true`"
                );
            }
        }
        if !self.variables.contains_key("agent_download_url") {
            bail!(
                "module {dir} breaks the module contract: it does not declare \"agent_download_url\", so machines cannot get the agent"
            );
        }
        let expected = MACHINE_OUTPUT_KEYS.join(", ");
        let Some(machines) = self.outputs.get("machines") else {
            bail!(
                "module {dir} breaks the module contract: it has no output \"machines\" (list of {{{expected}}})"
            );
        };
        match &machines.shape {
            OutputShape::EmptyList => {}
            OutputShape::ListOfObjects(keys) => {
                let missing: Vec<_> = MACHINE_OUTPUT_KEYS
                    .iter()
                    .filter(|key| !keys.iter().any(|k| k == *key))
                    .collect();
                if !missing.is_empty() {
                    bail!(
                        "module {dir} breaks the module contract: each item of its \"machines\" output must have {expected}; it lacks {missing:?} (`resource` is the machine's resource address, e.g. \"aws_instance.machine[${{i}}]\" in `[for i, m in aws_instance.machine : {{…}}]`)"
                    );
                }
            }
            OutputShape::Other => bail!(
                "module {dir} breaks the module contract: its \"machines\" output must be `[for … : {{{expected}}}]` (or `[]`)"
            ),
        }
        Ok(())
    }

    /// Checks a caller's variables against the declarations: unknown names, backend-filled
    /// names, missing required ones, nulls where not nullable, and type mismatches. Errors name
    /// the field as `variables.<name>...`.
    pub fn validate_variables(&self, given: &Map<String, Value>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (name, value) in given {
            let field = format!("variables.{name}");
            match self.variables.get(name) {
                None => errors.push(FieldError::new(
                    field,
                    format!("module \"{}\" has no variable \"{name}\"", self.name),
                )),
                Some(variable) if variable.backend_filled() => {
                    errors
                        .push(FieldError::new(field, "is set by the backend and cannot be given"));
                }
                Some(variable) => {
                    if value.is_null() && !variable.nullable {
                        errors.push(FieldError::new(field, "must not be null"));
                        continue;
                    }
                    let before = errors.len();
                    variable.ty.check(value, &field, &mut errors);
                    if errors.len() == before {
                        errors.extend(variable.check_validations(value, &field));
                    }
                }
            }
        }
        for variable in self.variables.values() {
            if variable.required() && !given.contains_key(&variable.name) {
                errors.push(FieldError::new(format!("variables.{}", variable.name), "is required"));
            }
        }
        errors
    }

    /// The number of machines the given variables ask for (`machine_count`, or its default).
    pub fn machine_count(&self, given: &Map<String, Value>) -> Option<u64> {
        given
            .get("machine_count")
            .or_else(|| self.variables.get("machine_count")?.default.as_ref())
            .and_then(Value::as_u64)
    }
}

fn parse_variable(name: String, block: &Block) -> anyhow::Result<Variable> {
    let ty = match attribute(block, "type") {
        Some(expr) => {
            TypeConstraint::parse(expr).map_err(|err| anyhow::anyhow!("invalid type: {err}"))?
        }
        None => TypeConstraint::Any,
    };
    let default = attribute(block, "default")
        .map(literal)
        .transpose()
        .context("default must be a literal value")?;
    Ok(Variable {
        name,
        ty,
        default,
        description: string_attribute(block, "description"),
        sensitive: bool_attribute(block, "sensitive").unwrap_or(false),
        nullable: bool_attribute(block, "nullable").unwrap_or(true),
        validations: block
            .body()
            .blocks()
            .filter(|inner| inner.identifier() == "validation")
            .filter_map(|inner| {
                Some(Validation {
                    condition: attribute(inner, "condition")?.clone(),
                    error_message: string_attribute(inner, "error_message")
                        .unwrap_or_else(|| "fails the module's validation".to_owned()),
                })
            })
            .collect(),
    })
}

fn attribute<'a>(block: &'a Block, key: &str) -> Option<&'a Expression> {
    block.body().attributes().find(|attr| attr.key() == key).map(|attr| attr.expr())
}

fn string_attribute(block: &Block, key: &str) -> Option<String> {
    match attribute(block, key)? {
        Expression::String(s) => Some(s.clone()),
        other => literal(other).ok().and_then(|v| v.as_str().map(str::to_owned)),
    }
}

fn bool_attribute(block: &Block, key: &str) -> Option<bool> {
    match attribute(block, key)? {
        Expression::Bool(b) => Some(*b),
        _ => None,
    }
}

/// A literal HCL expression (no references) as JSON.
fn literal(expr: &Expression) -> anyhow::Result<Value> {
    use hcl::eval::Evaluate;
    let value =
        expr.evaluate(&hcl::eval::Context::new()).map_err(|err| anyhow::anyhow!("{err}"))?;
    Ok(serde_json::to_value(value)?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CONTRACT: &str = r#"
variable "deployment_id" { type = string }
variable "machine_count" {
  type    = number
  default = 1
}
variable "agent_token" {
  type      = string
  sensitive = true
}
variable "agent_tls_cert" {
  type      = string
  sensitive = true
}
variable "agent_tls_key" {
  type      = string
  sensitive = true
}
variable "agent_port" { type = number }
variable "agent_download_url" { type = string }
"#;

    fn write_module(root: &Path, name: &str, extra: &str) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("variables.tf"), CONTRACT).unwrap();
        fs::write(dir.join("main.tf"), extra).unwrap();
    }

    const OUTPUT: &str = "output \"machines\" {\n  value = []\n}\n";

    #[test]
    fn loads_variables_and_outputs_of_each_module() {
        let root = tempfile::tempdir().unwrap();
        let extra = format!(
            "{OUTPUT}variable \"region\" {{\n  type = string\n  description = \"Where\"\n}}\nvariable \"tags\" {{\n  type = map(string)\n  default = {{}}\n}}\n"
        );
        write_module(root.path(), "demo", &extra);
        fs::create_dir_all(root.path().join("shared")).unwrap(); // not a module: no .tf
        let catalog = ModuleCatalog::load(root.path()).unwrap();
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["demo"]);
        let module = catalog.get("demo").unwrap();
        let region = &module.variables["region"];
        assert_eq!(region.description.as_deref(), Some("Where"));
        assert!(region.required());
        assert_eq!(module.variables["tags"].default, Some(json!({})));
        assert!(module.variables["agent_token"].sensitive);
        assert!(module.variables["agent_token"].backend_filled());
        assert!(!module.variables["machine_count"].required());
        assert!(module.outputs.contains_key("machines"));
    }

    #[test]
    fn each_machine_must_name_its_resource() {
        let without = "output \"machines\" {\n  value = [for i, m in terraform_data.machine : { name = m.id, public_ip = null, private_ip = null }]\n}\n";
        let root = tempfile::tempdir().unwrap();
        write_module(root.path(), "noresource", without);
        let err = format!("{:#}", ModuleCatalog::load(root.path()).unwrap_err());
        assert!(err.contains("it lacks [\"resource\"]"), "{err}");

        let with =
            without.replace("private_ip = null", "private_ip = null, \"resource\" = \"x[${i}]\"");
        let root = tempfile::tempdir().unwrap();
        write_module(root.path(), "named", &with);
        ModuleCatalog::load(root.path()).unwrap();

        let root = tempfile::tempdir().unwrap();
        write_module(root.path(), "opaque", "output \"machines\" {\n  value = local.machines\n}\n");
        let err = format!("{:#}", ModuleCatalog::load(root.path()).unwrap_err());
        assert!(err.contains("must be `[for"), "{err}");
    }

    #[test]
    fn a_module_breaking_the_contract_is_refused_naming_what_is_missing() {
        let root = tempfile::tempdir().unwrap();
        write_module(root.path(), "nooutput", "");
        let err = format!("{:#}", ModuleCatalog::load(root.path()).unwrap_err());
        assert!(err.contains("no output \"machines\""), "{err}");

        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("partial");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("main.tf"), format!("{OUTPUT}variable \"deployment_id\" {{}}\n"))
            .unwrap();
        let err = format!("{:#}", ModuleCatalog::load(root.path()).unwrap_err());
        assert!(err.contains("agent_token") && err.contains("partial"), "{err}");

        let root = tempfile::tempdir().unwrap();
        write_module(root.path(), "broken", "variable \"x\" { type = lisst(string) }\n");
        let err = format!("{:#}", ModuleCatalog::load(root.path()).unwrap_err());
        assert!(err.contains("main.tf") && err.contains("lisst"), "{err}");
    }

    #[test]
    fn variables_are_validated_by_name_presence_and_type() {
        let root = tempfile::tempdir().unwrap();
        write_module(
            root.path(),
            "demo",
            &format!(
                "{OUTPUT}variable \"region\" {{ type = string }}\nvariable \"size\" {{\n  type = number\n  default = 1\n  nullable = false\n}}\n"
            ),
        );
        let catalog = ModuleCatalog::load(root.path()).unwrap();
        let module = catalog.get("demo").unwrap();
        let check = |value: Value| {
            let errors = module.validate_variables(value.as_object().unwrap());
            errors.into_iter().map(|e| e.field).collect::<Vec<_>>()
        };
        assert!(check(json!({"region": "eu", "machine_count": 3})).is_empty());
        assert_eq!(check(json!({})), ["variables.region"]);
        assert_eq!(check(json!({"region": 1})), ["variables.region"]);
        assert_eq!(check(json!({"region": "eu", "bogus": 1})), ["variables.bogus"]);
        assert_eq!(check(json!({"region": "eu", "agent_token": "x"})), ["variables.agent_token"]);
        assert_eq!(check(json!({"region": "eu", "size": null})), ["variables.size"]);
        assert_eq!(module.machine_count(json!({"machine_count": 3}).as_object().unwrap()), Some(3));
        assert_eq!(module.machine_count(&Map::new()), Some(1));
    }
}

/// The repository's own `terraform/` folder, as the server loads it by default.
#[cfg(test)]
mod repository_modules {
    use serde_json::json;

    use super::*;

    fn catalog() -> ModuleCatalog {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform");
        ModuleCatalog::load(&root).expect("the repository's modules load")
    }

    /// Every `validation` of the repository's modules is one the backend evaluates (none is
    /// left to Terraform), its default passes it, and the classic bad values are refused with
    /// the module's message before anything is queued.
    #[test]
    fn the_modules_validations_are_evaluated_here_and_refuse_bad_values_with_their_message() {
        let catalog = catalog();
        let mut evaluated = 0;
        for module in catalog.modules() {
            for variable in module.variables.values() {
                for validation in &variable.validations {
                    let Some(default) = &variable.default else { continue };
                    let verdict = validation.check(&variable.name, default);
                    assert_eq!(verdict, Verdict::Holds, "{}.{}", module.name, variable.name);
                    evaluated += 1;
                }
            }
        }
        assert!(evaluated >= 40, "only {evaluated} conditions with defaults");
        let local = catalog.get("local").unwrap();
        for bad in [
            json!(0),
            json!(-1),
            json!(3.5),
            json!(51),
            json!(1e308),
            json!(18446744073709551615u64),
        ] {
            let errors =
                local.validate_variables(&Map::from_iter([("machine_count".into(), bad.clone())]));
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].field, "variables.machine_count");
            assert!(
                errors[0].message.contains("machine_count must be a whole number from 1 to 50"),
                "{bad}: {errors:?}"
            );
        }
        // A set or an object is converted by Terraform before its conditions see it (duplicates
        // go, optional attributes appear): those conditions stay Terraform's.
        let mut converted = local.variables["machine_count"].clone();
        converted.ty = TypeConstraint::Set(Box::new(TypeConstraint::Number));
        assert!(converted.check_validations(&json!([0]), "v").is_none());
        let aws = catalog.get("aws").unwrap();
        let errors = aws.validate_variables(&Map::from_iter([
            ("region".into(), json!("mars-1")),
            ("allowed_cidrs".into(), json!(["10.0.0.0/8", "everywhere"])),
        ]));
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["variables.allowed_cidrs", "variables.region"], "{errors:?}");
    }

    #[test]
    fn every_repository_module_loads_and_the_shared_folder_is_not_a_module() {
        let catalog = catalog();
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["aws", "azure", "gcp", "local"]);
    }

    #[test]
    fn cloud_modules_meet_the_contract_with_backend_filled_download_variables() {
        let catalog = catalog();
        for name in ["aws", "azure", "gcp"] {
            let module = catalog.get(name).unwrap();
            for variable in CONTRACT_VARIABLES.iter().chain(&["agent_download_url", "agent_sha256"])
            {
                let declared = module
                    .variables
                    .get(*variable)
                    .unwrap_or_else(|| panic!("{name} does not declare {variable}"));
                assert!(declared.description.is_some(), "{name}.{variable} has no description");
                assert_eq!(
                    declared.sensitive,
                    SENSITIVE_VARIABLES.contains(variable),
                    "{name}.{variable}: wrong sensitivity"
                );
            }
            for variable in module.variables.values() {
                assert!(
                    variable.description.is_some(),
                    "{name}.{} has no description",
                    variable.name
                );
                assert_ne!(
                    variable.ty,
                    TypeConstraint::Any,
                    "{name}.{} has no type",
                    variable.name
                );
            }
            let machines = &module.outputs["machines"];
            assert!(!machines.sensitive && machines.description.is_some(), "{name}.machines");
            assert!(module.outputs.len() >= 2, "{name} has no provider-specific output");

            // The only thing a caller must give is where the backend may reach the agents from.
            let required: Vec<_> =
                module.variables.values().filter(|v| v.required()).map(|v| &v.name).collect();
            assert_eq!(required, ["allowed_cidrs"], "{name}");
            // SSH is closed unless asked for, and the defaults are a sane small machine.
            assert_eq!(module.variables["ssh_allowed_cidrs"].default, Some(serde_json::json!([])));
            assert_eq!(module.variables["ssh_public_key"].default, Some(Value::Null));
            assert_eq!(module.variables["machine_count"].default, Some(serde_json::json!(1)));
            let errors = module.validate_variables(
                serde_json::json!({"allowed_cidrs": ["203.0.113.7/32"]}).as_object().unwrap(),
            );
            assert!(errors.is_empty(), "{name}: {errors:?}");
            let errors = module.validate_variables(
                serde_json::json!({"allowed_cidrs": ["0.0.0.0/0"], "agent_sha256": "x"})
                    .as_object()
                    .unwrap(),
            );
            assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        }
    }

    /// Every `.tf` file of a cloud module mentions the shared bootstrap the same way, so the
    /// bootstrap test (which renders that module) covers what each cloud boots.
    #[test]
    fn every_cloud_module_boots_the_shared_bootstrap_and_ignores_later_changes_to_it() {
        for name in ["aws", "azure", "gcp"] {
            let main =
                fs::read_to_string(catalog().get(name).unwrap().dir.join("main.tf")).unwrap();
            assert!(main.contains("source = \"../shared/bootstrap\""), "{name}");
            assert!(main.contains("module.bootstrap.user_data"), "{name}");
            assert!(main.contains("ignore_changes"), "{name}");
            assert!(main.contains("nim-deployment-id"), "{name}");
        }
    }
}
