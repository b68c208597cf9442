//! Helpers shared by the tests that run `cloudkon` and `cloudkon-worker`
//! processes (some against the AWS test servers `scripts/test` starts).
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cloudkon_core::TaskResult;
use cloudkon_core::aws::{Aws, QueueOptions, SqsQueue};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[allow(unused_imports)] // each test binary uses a different part
pub use cloudkon_testkit::{
    make_image, require_aws_servers as require_servers, serial, stderr, stdout, unique,
};

pub fn bin(name: &str) -> PathBuf {
    let cloudkon = PathBuf::from(env!("CARGO_BIN_EXE_cloudkon"));
    let path = cloudkon.with_file_name(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` first",
        path.display()
    );
    path
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn create_queue(name: &str, visibility: Duration, max_receives: Option<u32>) -> SqsQueue {
    runtime().block_on(async {
        let options = QueueOptions {
            visibility_timeout: visibility,
            max_receives,
            ..QueueOptions::default()
        };
        Aws::load()
            .await
            .sqs()
            .create_queue(name, &options)
            .await
            .unwrap()
    })
}

/// A worker process; tests use short leases, so that a killed worker's bundles
/// come back within seconds.
pub fn worker(queue: &str, table: &str, id: &str, lease: &str) -> Child {
    worker_with(queue, table, id, lease, &[])
}

/// [`worker`] with more flags.
pub fn worker_with(queue: &str, table: &str, id: &str, lease: &str, extra: &[&str]) -> Child {
    worker_command(queue, table, id, lease)
        .args(extra)
        .spawn()
        .unwrap()
}

/// The command of a [`worker`], to add flags or environment to.
pub fn worker_command(queue: &str, table: &str, id: &str, lease: &str) -> Command {
    let mut command = Command::new(bin("cloudkon-worker"));
    command
        .args(["--queue", queue, "--ledger-table", table, "--worker-id", id])
        .args(["--threads", "2", "--lease", lease, "--receive-wait", "1s"])
        .args(["--metrics-addr", "off"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    command
}

pub fn submit(workload: &Path, queue: &str, results: &Path) -> Child {
    submit_with(workload, queue, results, &[])
}

/// [`submit`] with more flags.
pub fn submit_with(workload: &Path, queue: &str, results: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cloudkon"))
        .arg("submit")
        .arg(workload)
        .args(["--queue", queue, "--json", "--output"])
        .arg(results)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn finish(child: Child, within: Duration) -> Output {
    let pid = child.id();
    let deadline = Instant::now() + within;
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let out = waiter.join().unwrap();
            panic!(
                "did not finish within {within:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().unwrap()
}

pub fn stop(mut child: Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
}

pub fn read_results(path: &Path) -> Vec<TaskResult> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
