//! The `cloudkon` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudkon_core::{Summary, TaskResult};

fn cloudkon() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudkon"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/workloads")
        .join(name)
}

use cloudkon_testkit::{stderr, stdout};

fn read_results(path: &Path) -> Vec<TaskResult> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn runs_the_shipped_sleep_workload_and_summarises_it() {
    let out = cloudkon()
        .args(["run", "--workers", "4"])
        .arg(example("sleep0-10k.txt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("done: 10000 tasks, 10000 succeeded, 0 failed, 0 timed out, 0 not run\n"),
        "{text}"
    );
    for needle in [
        "on 4 slots",
        "tasks/s",
        "efficiency",
        "queue wait p50",
        "end-to-end p50",
        "peak memory",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
}

#[test]
fn json_summary_and_results_file_cover_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let out = cloudkon()
        .args([
            "run",
            "--json",
            "--workers",
            "3",
            "--batch",
            "tour",
            "--output",
        ])
        .arg(&results)
        .arg(example("mixed.txt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Summary = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((summary.tasks, summary.succeeded, summary.slots), (8, 8, 3));
    assert!(summary.peak_rss_bytes.is_some());
    let mut results = read_results(&results);
    results.sort_by_key(|r| r.id);
    assert_eq!(
        results.iter().map(|r| r.id).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|r| r.batch.as_str() == "tour"));
    assert_eq!(results[2].stdout, "hello from CloudKon\n");
    assert_eq!(results[4].stdout, "one\ntwo words\n$HOME\n");
    assert_eq!(results[5].stdout, "parameter=0.25\n");
    assert_eq!(results[7].stdout, "expected 50 ms\n");
}

#[test]
fn a_malformed_workload_runs_nothing_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("bad.txt");
    let marker = dir.path().join("ran");
    std::fs::write(
        &workload,
        format!(
            "run touch {}\nsleep 10\nsleep ten\n\nrun 'unclosed\n",
            marker.display()
        ),
    )
    .unwrap();
    let results = dir.path().join("results.jsonl");
    let out = cloudkon()
        .arg("run")
        .arg(&workload)
        .arg("-o")
        .arg(&results)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let name = workload.display();
    assert!(
        err.contains(&format!(
            "{name}:3: sleep takes a whole number of milliseconds, got `ten`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{name}:5: run: cannot split the command line")),
        "{err}"
    );
    assert!(err.contains("nothing was run"), "{err}");
    assert!(
        !marker.exists(),
        "a task ran although the workload is malformed"
    );
    assert!(
        !results.exists(),
        "a results file was created for a run that never started"
    );
}

#[test]
fn missing_and_empty_workloads_are_clear_errors() {
    let out = cloudkon()
        .args(["run", "/nonexistent/w.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/w.txt: cannot read: No such file"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let out = cloudkon().arg("run").arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no tasks in this workload"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn failed_and_timed_out_tasks_make_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("w.txt");
    std::fs::write(&workload, "run true\nrun false\nsleep 5000\n").unwrap();
    let out = cloudkon()
        .args(["run", "--json", "--timeout", "100ms"])
        .arg(&workload)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: Summary = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (summary.succeeded, summary.failed, summary.timed_out),
        (1, 1, 1)
    );
}

#[test]
fn an_unwritable_results_file_is_refused_before_running() {
    let out = cloudkon()
        .args(["run", "-o", "/nonexistent/dir/results.jsonl"])
        .arg(example("sleep100-160.txt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot create results file /nonexistent/dir/results.jsonl"));
    assert!(stdout(&out).is_empty(), "it ran anyway: {}", stdout(&out));
}

#[test]
fn ctrl_c_stops_taking_tasks_and_prints_the_partial_summary() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    std::fs::create_dir(&started).unwrap();
    // 20 tasks of ~1 s on 2 slots; each announces its start with a file.
    let workload = dir.path().join("w.txt");
    let lines: String = (0..20)
        .map(|i| {
            format!(
                "run sh -c 'touch \"$1\"; sleep 1' sh {}/{i}\n",
                started.display()
            )
        })
        .collect();
    std::fs::write(&workload, lines).unwrap();
    let results = dir.path().join("results.jsonl");
    let child = cloudkon()
        .args(["run", "--json", "--workers", "2", "-o"])
        .arg(&results)
        .arg(&workload)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&started).unwrap().count() < 2 {
        assert!(Instant::now() < deadline, "tasks never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stopping: no new tasks"),
        "{}",
        stderr(&out)
    );
    let summary: Summary = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(summary.interrupted);
    // The running tasks finished; nothing else started.
    let started_count = std::fs::read_dir(&started).unwrap().count() as u64;
    assert_eq!(summary.succeeded, started_count, "{summary:?}");
    assert_eq!(summary.not_run, 20 - started_count);
    assert!(summary.not_run >= 16, "{summary:?}");
    assert_eq!(read_results(&results).len() as u64, summary.succeeded);
}

#[test]
fn a_second_ctrl_c_abandons_the_running_tasks() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    std::fs::create_dir(&started).unwrap();
    let workload = dir.path().join("w.txt");
    let lines: String = (0..4)
        .map(|i| {
            format!(
                "run sh -c 'touch \"$1\"; sleep 60' sh {}/{i}\n",
                started.display()
            )
        })
        .collect();
    std::fs::write(&workload, lines).unwrap();
    let log = dir.path().join("stderr.txt");
    let mut child = cloudkon()
        .args(["run", "--json", "--workers", "2"])
        .arg(&workload)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait_for = |what: &dyn Fn() -> bool, name: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !what() {
            assert!(Instant::now() < deadline, "{name} never happened");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(
        &|| std::fs::read_dir(&started).unwrap().count() == 2,
        "two tasks started",
    );
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    let said = |text: &str| std::fs::read_to_string(&log).unwrap().contains(text);
    wait_for(
        &|| said("stopping: no new tasks"),
        "the first interrupt's message",
    );
    let second = Instant::now();
    kill(pid, Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(said("abandoning the running tasks"));
    // Abandoned, not waited for: the tasks had a minute left.
    assert!(
        second.elapsed() < Duration::from_secs(30),
        "{:?}",
        second.elapsed()
    );
    let summary: Summary = serde_json::from_str(&out).unwrap();
    assert!(summary.interrupted);
    assert_eq!(summary.succeeded, 0, "{summary:?}");
}

#[test]
fn workload_generators_feed_run() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("sweep.txt");
    let out = cloudkon()
        .args(["workload", "run", "--count", "5", "-o"])
        .arg(&workload)
        .args(["--", "sh", "-c", "test $0 -lt 5 && echo p$0", "{i}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let check = cloudkon()
        .args(["workload", "check"])
        .arg(&workload)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&check).trim(),
        format!(
            "{}: 5 tasks (0 sleep, 5 run, 0 animoto)",
            workload.display()
        )
    );
    let results = dir.path().join("r.jsonl");
    let out = cloudkon()
        .arg("run")
        .arg(&workload)
        .arg("-o")
        .arg(&results)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut outputs: Vec<String> = read_results(&results)
        .into_iter()
        .map(|r| r.stdout)
        .collect();
    outputs.sort();
    assert_eq!(outputs, ["p0\n", "p1\n", "p2\n", "p3\n", "p4\n"]);

    let out = cloudkon()
        .args(["workload", "sleep", "--ms", "7", "--count", "3"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "sleep 7\nsleep 7\nsleep 7\n");
}

#[test]
fn help_teaches_the_format_and_exit_codes() {
    let out = cloudkon().arg("--help").output().unwrap();
    assert!(stdout(&out).contains("one task a line"));
    let out = cloudkon().args(["run", "--help"]).output().unwrap();
    assert!(stdout(&out).contains("130 interrupted"));
}
