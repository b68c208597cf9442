//! Subcommands that need the Kubernetes client run `cloudkon-operator` (next
//! to this binary) with their arguments, so that `cloudkon` itself builds
//! without kube: the first README command stays a short build.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, ensure};

/// Runs `cloudkon-operator SUBCOMMAND ARGS...` and exits as it did.
pub fn run(subcommand: &str, args: &[OsString]) -> Result<ExitCode> {
    let operator = std::env::current_exe()
        .context("cannot find the cloudkon executable")?
        .with_file_name("cloudkon-operator");
    ensure!(
        operator.exists(),
        "{} not found: `cloudkon {subcommand}` runs it; build it (cargo build --release -p cloudkon-operator)",
        operator.display()
    );
    let status = Command::new(&operator)
        .arg(subcommand)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", operator.display()))?;
    // A signal has no code: report it as a failure.
    let code = status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1);
    Ok(ExitCode::from(code))
}
