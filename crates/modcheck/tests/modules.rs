//! Runs the real `nim-modcheck` binary over the repository's cloud modules (which must pass) and
//! over copies with one mistake each, which must fail naming the file, line, argument and problem.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn repo_terraform() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform")
}

fn modcheck(modules_dir: &Path, modules: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nim-modcheck"))
        .arg("--modules-dir")
        .arg(modules_dir)
        .args(modules)
        .output()
        .expect("nim-modcheck runs")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

/// A copy of the cloud modules (and the shared bootstrap they call) with one edit to one file.
struct Mutant {
    _dir: tempfile::TempDir,
    modules_dir: PathBuf,
    file: PathBuf,
    text: String,
}

impl Mutant {
    fn new(file: &str, from: &str, to: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let modules_dir = dir.path().join("terraform");
        for module in ["aws", "azure", "gcp", "shared"] {
            copy_dir(&repo_terraform().join(module), &modules_dir.join(module));
        }
        let file = modules_dir.join(file);
        let original = fs::read_to_string(&file).unwrap();
        assert_eq!(
            original.matches(from).count(),
            1,
            "{from:?} must occur once in {}",
            file.display()
        );
        let text = original.replace(from, to);
        fs::write(&file, &text).unwrap();
        Self { _dir: dir, modules_dir, file, text }
    }

    /// The 1-based line of the first line of the file containing `needle`.
    fn line_of(&self, needle: &str) -> usize {
        self.text
            .lines()
            .position(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} is not in {}", self.file.display()))
            + 1
    }

    /// Runs the checker on `module`; it must fail with exactly `expected` findings, each given
    /// as (line, "subject: problem").
    fn assert_findings(&self, module: &str, expected: &[(usize, &str)]) {
        let output = modcheck(&self.modules_dir, &[module]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
        let wanted: Vec<String> = expected
            .iter()
            .map(|(line, rest)| format!("{}:{line}: {rest}", self.file.display()))
            .collect();
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(got, wanted, "stderr:\n{stderr}");
    }
}

#[test]
fn the_repository_cloud_modules_pass() {
    let output = modcheck(&repo_terraform(), &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout, "", "no findings");
    for (module, provider) in [
        ("aws", "hashicorp/aws 6.25.0"),
        ("azure", "hashicorp/azurerm 4.55.0, hashicorp/tls 4.1.0"),
        ("gcp", "hashicorp/google 6.50.0"),
    ] {
        let line = stderr
            .lines()
            .find(|line| line.contains(&format!("terraform/{module}:")))
            .unwrap_or_else(|| panic!("no summary for {module}:\n{stderr}"));
        assert!(line.contains(&format!("checked against {provider}: clean")), "{line}");
    }
}

#[test]
fn a_misspelt_argument_is_named_with_a_suggestion() {
    let mutant = Mutant::new(
        "aws/main.tf",
        "volume_type           = \"gp3\"",
        "volume_typ            = \"gp3\"",
    );
    mutant.assert_findings(
        "aws",
        &[(
            mutant.line_of("volume_typ "),
            "aws_instance.machine.root_block_device.volume_typ: unsupported argument: hashicorp/aws 6.25.0 has no argument \"volume_typ\" here; did you mean \"volume_type\"?",
        )],
    );
}

#[test]
fn a_missing_required_argument_is_reported_at_the_resource() {
    let mutant = Mutant::new("azure/main.tf", "  size                  = var.vm_size\n", "");
    mutant.assert_findings(
        "azure",
        &[(
            mutant.line_of("resource \"azurerm_linux_virtual_machine\" \"machine\""),
            "azurerm_linux_virtual_machine.machine.size: required argument is missing (hashicorp/azurerm 4.55.0)",
        )],
    );
}

#[test]
fn a_missing_required_block_is_reported_at_the_resource() {
    let mutant = Mutant::new(
        "gcp/main.tf",
        "  network_interface {\n    subnetwork = google_compute_subnetwork.machines.id\n\n    # An ephemeral public address, so the backend can reach the agent.\n    access_config {}\n  }\n",
        "",
    );
    mutant.assert_findings(
        "gcp",
        &[(
            mutant.line_of("resource \"google_compute_instance\" \"machine\""),
            "google_compute_instance.machine.network_interface: required block is missing (hashicorp/google 6.50.0)",
        )],
    );
}

#[test]
fn an_argument_used_as_a_block_is_reported() {
    let mutant = Mutant::new(
        "aws/main.tf",
        "  enable_dns_hostnames = true\n\n  tags = { Name = local.name }\n",
        "  enable_dns_hostnames = true\n\n  tags {\n    Name = local.name\n  }\n",
    );
    mutant.assert_findings(
        "aws",
        &[(
            mutant.line_of("  tags {"),
            "aws_vpc.this.tags: argument used as a block: hashicorp/aws 6.25.0 has an argument \"tags\" of type map(string) here, write `tags = ...`, not `tags { ... }`",
        )],
    );
}

#[test]
fn a_block_used_as_an_argument_is_reported() {
    let mutant = Mutant::new("aws/main.tf", "  metadata_options {", "  metadata_options = {");
    // The object's own `key = value` lines are fine HCL; only the argument itself is wrong.
    mutant.assert_findings(
        "aws",
        &[(
            mutant.line_of("metadata_options = {"),
            "aws_instance.machine.metadata_options: block used as an argument: hashicorp/aws 6.25.0 has a block \"metadata_options\" here, write `metadata_options { ... }`, not `metadata_options = ...`",
        )],
    );
}

#[test]
fn a_literal_of_the_wrong_type_is_reported() {
    let mutant = Mutant::new(
        "gcp/main.tf",
        "allow_stopping_for_update = true",
        "allow_stopping_for_update = \"yes\"",
    );
    mutant.assert_findings(
        "gcp",
        &[(
            mutant.line_of("allow_stopping_for_update"),
            "google_compute_instance.machine.allow_stopping_for_update: wrong type: a string where the provider expects bool",
        )],
    );
}

#[test]
fn a_wrong_type_inside_a_dynamic_block_is_reported() {
    let mutant = Mutant::new(
        "azure/main.tf",
        "priority                   = 110",
        "priority                   = \"high\"",
    );
    mutant.assert_findings(
        "azure",
        &[(
            mutant.line_of("\"high\""),
            "azurerm_network_security_group.machines.security_rule.priority: wrong type: a string where the provider expects number",
        )],
    );
}

#[test]
fn ignore_changes_must_name_arguments_of_the_resource() {
    let mutant = Mutant::new(
        "aws/main.tf",
        "ignore_changes = [user_data, ami]",
        "ignore_changes = [user_data, amis]",
    );
    mutant.assert_findings(
        "aws",
        &[(
            mutant.line_of("ignore_changes"),
            "aws_instance.machine.lifecycle.ignore_changes: ignore_changes names \"amis\", which is no argument or block here; did you mean \"ami\"?",
        )],
    );
}

#[test]
fn a_version_pin_of_another_major_than_the_schema_is_reported() {
    let mutant = Mutant::new("aws/versions.tf", "version = \"~> 6.25\"", "version = \"~> 5.80\"");
    mutant.assert_findings(
        "aws",
        &[(
            mutant.line_of("version = \"~> 5.80\""),
            "terraform.required_providers.aws: version \"~> 5.80\" does not allow 6.25.0, the version the schema is from; use \"~> 6.25\" (schema: hashicorp/aws 6.25.0 from @cdktf/provider-aws 21.22.1)",
        )],
    );
}

#[test]
fn a_child_module_call_must_give_its_required_variables() {
    let mutant = Mutant::new("gcp/main.tf", "  agent_sha256       = var.agent_sha256\n", "");
    mutant.assert_findings(
        "gcp",
        &[(
            mutant.line_of("module \"bootstrap\""),
            "module.bootstrap.agent_sha256: required argument is missing: ../shared/bootstrap has variable \"agent_sha256\" without a default",
        )],
    );
}

#[test]
fn a_deprecated_argument_is_reported() {
    let mutant = Mutant::new(
        "gcp/main.tf",
        "  allow_stopping_for_update = true\n",
        "  allow_stopping_for_update = true\n\n  confidential_instance_config {\n    enable_confidential_compute = false\n  }\n",
    );
    mutant.assert_findings(
        "gcp",
        &[(
            mutant.line_of("enable_confidential_compute"),
            "google_compute_instance.machine.confidential_instance_config.enable_confidential_compute: deprecated in hashicorp/google 6.50.0: Defines whether the instance should have confidential compute enabled. Field will be deprecated in a future release.",
        )],
    );
}
