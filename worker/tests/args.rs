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
