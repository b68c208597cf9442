//! Subcommands that need the Kubernetes client run `cloudkon-operator` (next
//! to this binary) with their arguments, so that `cloudkon` itself builds
//! without kube: the first README command stays a short build.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};

/// Runs `cloudkon-operator SUBCOMMAND ARGS...` and exits as it did.
pub fn run(subcommand: &str, args: &[OsString]) -> Result<ExitCode> {
    let operator = std::env::current_exe()
        .context("cannot find the cloudkon executable")?
        .with_file_name("cloudkon-operator");
    Ok(run_at(&operator, subcommand, args))
}

/// Runs `operator SUBCOMMAND ARGS...` and exits as it did; exit status 2
/// (bad usage or setup: nothing ran) when it cannot run, as the operator's
/// own errors in `batch` and `simulate` are.
fn run_at(operator: &Path, subcommand: &str, args: &[OsString]) -> ExitCode {
    if !operator.exists() {
        say!("error: {}", not_found(operator, subcommand));
        return ExitCode::from(crate::exit::USAGE);
    }
    let status = match Command::new(operator).arg(subcommand).args(args).status() {
        Ok(status) => status,
        Err(e) => {
            say!("error: cannot run {}: {e}", operator.display());
            return ExitCode::from(crate::exit::USAGE);
        }
    };
    // A signal has no code: report it as a failure.
    let code = status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1);
    ExitCode::from(code)
}

fn not_found(operator: &Path, subcommand: &str) -> String {
    format!(
        "{} not found: `cloudkon {subcommand}` runs it. Install it beside cloudkon \
         (cargo install --locked --path operator, in the CloudKon source), or build it \
         (cargo build --release -p cloudkon-operator) when you run target/release/cloudkon",
        operator.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_operator_is_a_setup_error_that_says_how_to_install_it() {
        let dir = std::env::temp_dir().join(format!("cloudkon-no-operator-{}", std::process::id()));
        let operator = dir.join("cloudkon-operator");
        let code = run_at(&operator, "batch", &[OsString::from("list")]);
        assert_eq!(
            code,
            ExitCode::from(2),
            "README: `cloudkon batch` errors exit 2"
        );
        let message = not_found(&operator, "batch");
        assert!(
            message.contains("cargo install --locked --path operator")
                && message.contains("`cloudkon batch` runs it"),
            "{message}"
        );
    }
}
