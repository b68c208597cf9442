//! The `cloudkon` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudkon_core::{Summary, TaskResult};

/// `cloudkon` whose AWS calls, were any made, could only reach a closed
/// loopback port with static credentials (no instance metadata lookup):
/// these tests check what is refused before any call, and a regression must
/// not send one out of this machine.
fn cloudkon() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudkon"));
    cmd.env_remove("RUST_LOG")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for service in ["SQS", "DYNAMODB", "S3"] {
        cmd.env_remove(format!("AWS_ENDPOINT_URL_{service}"));
    }
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
fn no_more_slots_than_tasks() {
    // The most slots allowed, over 8 tasks: 8 slots, not 100,000 of them
    // held in memory (2 GB) with nothing to run.
    let out = cloudkon()
        .args(["run", "--json", "--workers", "100000"])
        .arg(example("mixed.txt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Summary = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((summary.tasks, summary.succeeded, summary.slots), (8, 8, 8));
}

/// `cloudkon run bad.txt 2>&1 | head`: the reader gone, the errors are not
/// written, and the exit code is still the command's own (2, a bad
/// workload), not a panic's 101.
#[test]
fn errors_on_a_closed_stderr_keep_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("bad.txt");
    std::fs::write(&workload, "sleep ten\n".repeat(30)).unwrap();
    let mut child = cloudkon()
        .arg("run")
        .arg(&workload)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(2));
}

/// `workload -o` (and `report`) write beside the output and rename it into
/// place when whole: a signal before that leaves neither the output nor the
/// hidden file it was being written in.
#[test]
fn an_interrupted_workload_output_leaves_no_hidden_file() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("w.txt");
        let child = cloudkon()
            .args([
                "workload",
                "sleep",
                "--ms",
                "0",
                "--count",
                "500000000",
                "-o",
            ])
            .arg(&output)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(
            &|| {
                std::fs::read_dir(dir.path())
                    .unwrap()
                    .any(|e| e.unwrap().metadata().is_ok_and(|m| m.len() > 1_000_000))
            },
            "the output being written",
        );
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{signal}: {}", stderr(&out));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{signal}: left behind: {left:?}");
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
    // Only the sleep gets --timeout's 100 ms: `true` and `false` set a
    // timeout of their own, or a slow spawn would time them out too.
    std::fs::write(
        &workload,
        concat!(
            r#"{"kind":"run","program":"true","timeout_ms":60000}"#,
            "\n",
            r#"{"kind":"run","program":"false","timeout_ms":60000}"#,
            "\nsleep 5000\n",
        ),
    )
    .unwrap();
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

/// Waits for `what` for up to 20 s.
fn wait_for(what: &dyn Fn() -> bool, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !what() {
        assert!(Instant::now() < deadline, "{name} never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process runs (a zombie does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn a_workload_read_once_only_is_refused_before_anything_runs() {
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let results = dir.path().join("r.jsonl");
    let task = format!("run touch {}\n", marker.display());
    let refused = |out: &std::process::Output, name: &str| {
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(out));
        assert!(stderr(out).contains(name), "{}", stderr(out));
        assert!(!marker.exists(), "{name}: a task ran");
        assert!(!results.exists(), "{name}: a results file was made");
    };

    // A pipe: the check would drain it, leaving nothing to run.
    for command in [&["run"][..], &["submit", "--queue", "q"]] {
        let mut child = cloudkon()
            .args(command)
            .args(["/dev/stdin", "-o"])
            .arg(&results)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // It may be refused before it reads: a closed pipe is no failure here.
        let _ = stdin.write_all(task.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        refused(&out, "/dev/stdin: not a regular file");
        assert!(stderr(&out).contains("save it to a file first"));
    }

    // A named pipe: the check would wait for a writer for ever.
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = cloudkon().arg("run").arg(&fifo).output().unwrap();
    refused(&out, "not a regular file");

    // The workload as its own results file, by its name or another.
    let workload = dir.path().join("w.txt");
    std::fs::write(&workload, &task).unwrap();
    let link = dir.path().join("link.txt");
    std::fs::hard_link(&workload, &link).unwrap();
    for output in [&workload, &link] {
        let out = cloudkon()
            .arg("run")
            .arg(&workload)
            .arg("-o")
            .arg(output)
            .output()
            .unwrap();
        refused(&out, "that is the workload");
        assert_eq!(std::fs::read_to_string(&workload).unwrap(), task);
    }
}

#[test]
fn a_zero_timeout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("w.txt");
    std::fs::write(&workload, "run true\n").unwrap();
    let out = cloudkon()
        .args(["run", "--timeout", "0s"])
        .arg(&workload)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("omit --timeout for no limit"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "it ran: {}", stdout(&out));
}

#[test]
fn results_reach_the_file_while_the_run_goes_on() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let workload = dir.path().join("w.txt");
    std::fs::write(
        &workload,
        format!(
            "run true\nrun sh -c 'echo $$ > \"$1\"; exec sleep 60' sh {}\n",
            pid_file.display()
        ),
    )
    .unwrap();
    let results = dir.path().join("r.jsonl");
    /// Kills the run, and its long task once started, however the test ends.
    struct Run<'a>(std::process::Child, &'a Path);
    impl Drop for Run<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if let Some(task) = std::fs::read_to_string(self.1)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(-task), Signal::SIGKILL);
            }
        }
    }
    let mut run = Run(
        cloudkon()
            .args(["run", "--workers", "1", "-o"])
            .arg(&results)
            .arg(&workload)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        &pid_file,
    );
    wait_for(
        &|| std::fs::read_to_string(&results).is_ok_and(|text| text.ends_with('\n')),
        "the first result in the file",
    );
    assert!(run.0.try_wait().unwrap().is_none(), "the run ended");
    wait_for(
        &|| std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n')),
        "the second task's start",
    );
    // As a kill -9 or the OOM killer would: what was written stays.
    drop(run);
    let written = read_results(&results);
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].id, 0);
}

#[test]
fn a_hangup_stops_the_run_as_sigterm_does_and_leaves_no_task_behind() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let workload = dir.path().join("w.txt");
    std::fs::write(
        &workload,
        format!(
            "run sh -c 'echo $$ > \"$1\"; exec sleep 3' sh {}\nrun true\n",
            pid_file.display()
        ),
    )
    .unwrap();
    let child = cloudkon()
        .args(["run", "--json", "--workers", "1"])
        .arg(&workload)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        &|| std::fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n')),
        "the task's start",
    );
    let task: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
    let out = child.wait_with_output().unwrap();
    let still_running = running(task);
    if still_running {
        let _ = kill(Pid::from_raw(-task), Signal::SIGKILL);
    }
    assert!(!still_running, "the task outlived cloudkon");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    // The running task finished; the other never started.
    let summary: Summary = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((summary.succeeded, summary.not_run), (1, 1), "{summary:?}");
}

#[test]
fn many_workers_are_not_held_back_by_the_soft_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("w.txt");
    std::fs::write(&workload, "run sleep 0.5\n".repeat(100)).unwrap();
    // 100 tasks at once hold 200 pipes: far past a soft limit of 64.
    let out = Command::new("sh")
        .args(["-c", "ulimit -Sn 64 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_cloudkon"))
        .args(["run", "--json", "--workers", "100"])
        .arg(&workload)
        .env("RUST_LOG", "cloudkon=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Summary = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary.succeeded, 100, "{summary:?}");
    assert!(
        stderr(&out).contains("open files limit raised"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_workload_without_tasks_fails_its_check_as_it_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("empty.txt");
    std::fs::write(&workload, "# nothing yet\n\n").unwrap();
    for args in [&["workload", "check"][..], &["run"][..]] {
        let out = cloudkon().args(args).arg(&workload).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no tasks in this workload"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
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

/// A refused generation leaves the file it would have replaced as it was:
/// not emptied (a later run would find no tasks), not cut short.
#[test]
fn a_refused_workload_leaves_an_existing_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("sweep.txt");
    let before = "run echo 0\nrun echo 1\n";
    std::fs::write(&workload, before).unwrap();
    let out = cloudkon()
        .args(["workload", "run", "--count", "1000", "-o"])
        .arg(&workload)
        .args(["--", ""])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(std::fs::read_to_string(&workload).unwrap(), before, "{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "error: run needs a program name: nothing written to {}",
            workload.display()
        )),
        "{err}"
    );
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 1, "no temporary file is left behind");

    // A directory is refused before anything is generated.
    let out = cloudkon()
        .args(["workload", "sleep", "--ms", "1", "--count", "3", "-o"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("that is a directory"), "{err}");

    // Generated whole, it replaces the file.
    let out = cloudkon()
        .args(["workload", "sleep", "--ms", "1", "--count", "3", "-o"])
        .arg(&workload)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&workload).unwrap(),
        "sleep 1\nsleep 1\nsleep 1\n"
    );
}

/// More than SQS's 12 hours of visibility is refused as the arguments are
/// read, not cut to 12 hours (nothing reaches a queue).
#[test]
fn a_visibility_beyond_sqs_limit_is_refused() {
    let out = cloudkon()
        .args(["queue", "create", "q", "--visibility", "13h"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("SQS hides a message at most 12h"), "{err}");
}

#[test]
fn help_teaches_the_format_and_exit_codes() {
    let out = cloudkon().arg("--help").output().unwrap();
    assert!(stdout(&out).contains("one task a line"));
    let out = cloudkon().args(["run", "--help"]).output().unwrap();
    assert!(stdout(&out).contains("130 interrupted"));
}

/// A task too large for an SQS message is refused by `submit` before any
/// cloud call (sent, it would be refused at every retry and its bundle never
/// run); `run` runs it here.
#[test]
fn a_task_too_large_for_a_message_is_refused_by_submit_and_run_by_run() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("w.txt");
    // Three arguments of 100 kB: one over 128 KiB is more than exec takes.
    let big = "x".repeat(100_000);
    std::fs::write(&workload, format!("run true\nrun true {big} {big} {big}\n")).unwrap();
    let out = cloudkon()
        .args(["submit", "--queue", "q"])
        .arg(&workload)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("w.txt: task 1 is too large"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    let out = cloudkon().arg("run").arg(&workload).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
