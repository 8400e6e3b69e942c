//! `nimctl`: a shim over the `cli` library, so the code stays testable.

fn main() -> std::process::ExitCode {
    cli::main()
}
