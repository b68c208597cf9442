//! `cloudkon-operator run`'s flags: a value that would break the operator is
//! refused before anything starts, naming the flag.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudkon-operator"))
        .arg("run")
        .args(args)
        .env_remove("CLOUDKON_MISSING_AFTER")
        .envs(env.iter().copied())
        .output()
        .expect("run cloudkon-operator");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn durations_too_short_to_work_are_refused_naming_the_flag() {
    // 0 would report every running task lost at once, spin the pool poll,
    // or make a leader's lease that is never held.
    for (flag, value) in [
        ("--missing-after", "0s"),
        ("--missing-after", "500ms"),
        ("--poll", "0s"),
        ("--lease-duration", "0s"),
    ] {
        let (code, stderr) = run(&[flag, value], &[]);
        assert_eq!(code, Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("too short"),
            "{flag} {value}: {stderr}"
        );
    }
    let (code, stderr) = run(&[], &[("CLOUDKON_MISSING_AFTER", "0s")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--missing-after"), "{stderr}");
    let (code, stderr) = run(&["--missing-after", "soon"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("soon"), "{stderr}");
}
