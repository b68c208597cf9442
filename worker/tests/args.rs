//! The worker's flags: a bad value is refused before anything starts,
//! naming the flag and what is wrong.

use std::process::Command;

fn worker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cloudkon-worker"))
        .args(["--queue", "q", "--metrics-addr", "off"])
        .args(args)
        .env_remove("CLOUDKON_CANCEL_CHECK")
        .output()
        .expect("run cloudkon-worker")
}

#[test]
fn a_cancel_check_out_of_range_is_refused_with_the_flag_named() {
    for bad in ["0s", "50ms", "2h", "soon"] {
        let out = worker(&["--cancel-check", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--cancel-check"), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "{bad}: {stderr}");
    }
}

#[test]
fn a_lease_out_of_range_is_refused_from_the_flag_or_the_environment() {
    let lease = |env: Option<&str>, flag: Option<&str>| {
        let mut worker = Command::new(env!("CARGO_BIN_EXE_cloudkon-worker"));
        // Past the flags, the worker stops at once on this (1).
        worker
            .args(["--queue", "q", "--metrics-addr", "nowhere"])
            .env_remove("CLOUDKON_CANCEL_CHECK")
            .env_remove("CLOUDKON_LEASE");
        if let Some(env) = env {
            worker.env("CLOUDKON_LEASE", env);
        }
        if let Some(flag) = flag {
            worker.args(["--lease", flag]);
        }
        let out = worker.output().expect("run cloudkon-worker");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // 0 hid nothing and every claim expired as made; past 12h SQS cut the
    // visibility short of the lease.
    for bad in ["0s", "500ms", "13h", "12h 1s"] {
        for (env, flag) in [(Some(bad), None), (None, Some(bad))] {
            let (code, stderr) = lease(env, flag);
            assert_eq!(code, Some(2), "{bad}: {stderr}");
            assert!(stderr.contains("--lease"), "{bad}: {stderr}");
            assert!(stderr.contains("outside 1s..12h"), "{bad}: {stderr}");
        }
    }
    for good in ["1s", "12h"] {
        let (code, stderr) = lease(None, Some(good));
        assert_eq!(code, Some(1), "{good}: {stderr}");
        assert!(stderr.contains("--metrics-addr"), "{good}: {stderr}");
    }
}

/// In a pod, the worker's fatal error is its termination message: the pod's
/// status, and the pool's WorkersFailing condition, then say why it stopped.
#[test]
fn a_fatal_error_is_written_as_the_termination_message() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        std::fs::write(&log, "").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cloudkon-worker"))
            .args(["--queue", "q"])
            .args(args)
            .env_remove("CLOUDKON_CANCEL_CHECK")
            .env("CLOUDKON_TERMINATION_LOG", &log)
            .envs(env.iter().copied())
            .output()
            .expect("run cloudkon-worker");
        (out, std::fs::read_to_string(&log).unwrap())
    };

    // A bad value, refused by the flag parser: its first line, the flag named.
    let (out, message) = run(&[("CLOUDKON_LEASE", "a while")], &["--metrics-addr", "off"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        message.starts_with("error: invalid value 'a while' for '--lease"),
        "{message:?}"
    );
    assert!(!message.contains('\n'), "{message:?}");

    // An error once running: the whole chain, on one line.
    let (out, message) = run(&[], &["--metrics-addr", "nowhere"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        message.starts_with("error: --metrics-addr: `nowhere`"),
        "{message:?}"
    );

    // Help is no error: the file is left empty.
    let (out, message) = run(&[], &["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(message, "");
}

/// A worker of many slots is not held back by a low soft limit of open
/// files: it raises it to the hard one before anything else.
#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Sn 64 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_cloudkon-worker"))
        // Stops at once, after the limit was raised.
        .args(["--queue", "q", "--metrics-addr", "nowhere"])
        .env_remove("CLOUDKON_CANCEL_CHECK")
        .env("RUST_LOG", "cloudkon_worker=debug")
        .output()
        .expect("run cloudkon-worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("open files limit"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("raised") && line.contains("before=64"),
        "{line}"
    );
    assert!(!line.contains("now=64"), "{line}");
    // Not a terminal: no colour codes in the log.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}
