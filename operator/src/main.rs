//! `cloudkon-operator`: CloudKon's Kubernetes operator. For now it prints its
//! CustomResourceDefinitions; the reconcilers (`run`) come next.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cloudkon_operator::crd;

/// CloudKon's Kubernetes operator: TaskBatch (a batch of tasks) and WorkerPool
/// (a queue and the workers that drain it, scaled on its backlog).
///
/// Install the CRDs:
///
///   cloudkon-operator crd | kubectl apply -f -
#[derive(Debug, Parser)]
#[command(
    name = "cloudkon-operator",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (TaskBatch, WorkerPool) as one
    /// multi-document YAML stream, or write one file per CRD with --out-dir.
    ///
    /// The committed crds/*.yaml are made with
    /// `cargo run -p cloudkon-operator -- crd --out-dir crds`.
    Crd {
        /// Write `<kind>.yaml` files (taskbatch.yaml, workerpool.yaml) into
        /// this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd { out_dir } => print_crds(out_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds(out_dir: Option<PathBuf>) -> Result<()> {
    let crds = crd::crds();
    match out_dir {
        None => {
            let all: String = crds.iter().map(crd::to_yaml).collect();
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(all.as_bytes())
                .and_then(|()| stdout.flush())
            {
                // `cloudkon-operator crd | head`: not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("cannot write to standard output")?,
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for c in &crds {
                let path = dir.join(crd::file_name(c));
                std::fs::write(&path, crd::to_yaml(c))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
