//! `cloudkon-operator simulate` as a user runs it: exit codes and where the
//! plots go.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn simulate(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloudkon-operator"))
        .arg("simulate")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `examples/simulations/small-calibration.yaml` (a run of milliseconds)
/// named `name`, written in `dir` as `file`.
fn config_named(dir: &Path, file: &str, name: &str) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/simulations/small-calibration.yaml");
    let text = std::fs::read_to_string(example).unwrap();
    assert!(text.contains("\nname: small-calibration\n"));
    let path = dir.join(file);
    std::fs::write(
        &path,
        text.replace(
            "\nname: small-calibration\n",
            &format!("\nname: '{name}'\n"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_plots_directory_that_cannot_be_written_stops_it_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_named(dir.path(), "c.yaml", "c");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let out = simulate(&[
        config.as_os_str(),
        "--svg".as_ref(),
        file.join("plots").as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot write the plots in"), "{stderr}");
    assert!(out.stdout.is_empty(), "a run was made first");
}

#[test]
fn each_runs_plots_stay_in_the_directory_under_a_name_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let a = config_named(dir.path(), "a.yaml", "../x");
    let b = config_named(dir.path(), "b.yaml", "../x");
    let plots = dir.path().join("plots");
    let out = simulate(&[
        a.as_os_str(),
        b.as_os_str(),
        "--svg".as_ref(),
        plots.as_os_str(),
    ]);
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut written: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "-.-x-2-queue.svg",
            "-.-x-2-workers.svg",
            "-.-x-queue.svg",
            "-.-x-workers.svg"
        ]
    );
    // Nothing beside the directory.
    assert!(!dir.path().join("x-queue.svg").exists());
    for f in &written {
        let svg = std::fs::read_to_string(plots.join(f)).unwrap();
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{f}");
    }
}
