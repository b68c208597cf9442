//! The distributed path end to end, against the real AWS-compatible servers
//! that `scripts/test` starts (fauxqs for SQS, DynamoDB Local): `cloudkon
//! submit` and `cloudkon-worker` processes, workers killed, servers paused.
//!
//! Ignored by a plain `cargo test`; `scripts/test` runs them with the servers up.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cloudkon_core::aws::{Aws, SqsQueue};
use cloudkon_core::queue::TaskQueue;
use cloudkon_core::{BatchId, Bundle, Summary, Task, TaskSpec, Timestamp};
use cloudkon_testkit::{RefusingProxy, StoppedServer};
use common::{
    bin, create_queue, finish, read_results, require_servers, runtime, stop, submit, submit_with,
    unique, worker, worker_with,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Lines of a log file that tasks append their id to: executions per id.
fn executions(log: &Path) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *counts
            .entry(line.trim().parse::<u64>().unwrap())
            .or_default() += 1;
    }
    counts
}

/// Waits (bounded) until the tasks' execution log has at least `n` lines.
fn wait_for_executions(log: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let lines = std::fs::read_to_string(log).map_or(0, |t| t.lines().count());
        if lines >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {lines} of {n} tasks ran");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A workload of `count` tasks that each log their id, then sleep `secs`.
fn logging_workload(dir: &Path, count: u64, secs: &str) -> (PathBuf, PathBuf) {
    let log = dir.join("executions.log");
    let workload = dir.join("w.txt");
    let lines: String = (0..count)
        .map(|i| {
            format!(
                "run sh -c 'echo {i} >> \"$0\"; sleep {secs}' {}\n",
                log.display()
            )
        })
        .collect();
    std::fs::write(&workload, lines).unwrap();
    (workload, log)
}

/// Per worker: its slots, the lease (renewed every third of it), its
/// results' linger, and the length of the kill test's tasks.
const KILL_THREADS: u64 = 2;
const KILL_LEASE_SECS: f64 = 3.0;
const KILL_LINGER_SECS: f64 = 0.2;
const KILL_TASK_SECS: f64 = 0.2;

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn killed_workers_lose_nothing_and_rerun_only_what_they_had_not_reported() {
    require_servers();
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let queue = create_queue(&unique("kill"), Duration::from_secs(5), None);
    let table = unique("ledger-kill");
    let tasks = 600;
    let (workload, log) = logging_workload(dir.path(), tasks, &KILL_TASK_SECS.to_string());
    let results = dir.path().join("results.jsonl");
    let lease = format!("{KILL_LEASE_SECS}s");
    let linger = format!("{KILL_LINGER_SECS}s");
    let killable = |id: &str| {
        worker_with(
            queue.url(),
            &table,
            id,
            &lease,
            &["--results-linger", &linger],
        )
    };
    let mut workers: Vec<Child> = (0..3).map(|i| killable(&format!("w{i}"))).collect();
    // Bundles cut for the 6 slots: several tasks each, spread over a worker's slots.
    let client = submit_with(&workload, queue.url(), &results, &["--slots", "6"]);

    // Kill one worker with SIGKILL after 100 executions, start a replacement,
    // and kill another after 300: what they held comes back, less what they
    // had reported by their last renewal.
    wait_for_executions(&log, 100, Duration::from_secs(120));
    let mut victim = workers.remove(0);
    kill(Pid::from_raw(victim.id() as i32), Signal::SIGKILL).unwrap();
    victim.wait().unwrap();
    workers.push(killable("w3"));
    wait_for_executions(&log, 300, Duration::from_secs(120));
    let mut victim = workers.remove(0);
    kill(Pid::from_raw(victim.id() as i32), Signal::SIGKILL).unwrap();
    victim.wait().unwrap();

    let out = finish(client, Duration::from_secs(300));
    for w in workers {
        stop(w);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Summary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary.tasks, summary.succeeded, summary.not_run),
        (tasks, tasks, 0)
    );

    // Exactly one result per task.
    let mut per_task = vec![0u32; tasks as usize];
    for r in read_results(&results) {
        per_task[r.id as usize] += 1;
    }
    assert!(
        per_task.iter().all(|&n| n == 1),
        "a task has no result or several"
    );

    // Every task ran. The only re-runs: per killed worker, the tasks it
    // finished since its last renewal (every lease/3) or whose results were
    // still lingering, and those running — slots × ((lease/3 + linger) ÷
    // task length + 2), as README states. One-task bundles would allow
    // fewer, bundles without progress far more.
    let runs = executions(&log);
    assert_eq!(runs.len(), tasks as usize, "a task never ran");
    let reruns: usize = runs.values().map(|&n| n - 1).sum();
    let unreported = KILL_LEASE_SECS / 3.0 + KILL_LINGER_SECS;
    let per_kill = KILL_THREADS as f64 * (unreported / KILL_TASK_SECS + 2.0);
    eprintln!(
        "re-executed tasks after two kill -9: {reruns} (bound {})",
        2.0 * per_kill
    );
    assert!(
        reruns as f64 <= 2.0 * per_kill,
        "{reruns} re-executions: more than the killed workers had not reported"
    );
    queue_cleanup(&queue);
}

fn queue_cleanup(queue: &SqsQueue) {
    runtime().block_on(async {
        let _ = queue.delete().await;
    });
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_message_delivered_twice_runs_once() {
    require_servers();
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("executions.log");
    // Redelivered after 1 s while its first run (3 s) is still going: the lease
    // (10 s, renewed every 3.3 s) must keep the second delivery from running it.
    let queue = create_queue(&unique("dup"), Duration::from_secs(1), None);
    let table = unique("ledger-dup");
    let response = create_queue(&unique("dup-resp"), Duration::from_secs(30), None);
    let task = |id: u64, secs: &str| Task {
        batch: BatchId::new("dup"),
        id,
        attempt: 1,
        timeout: None,
        spec: TaskSpec::Run {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!("echo {id} >> '{}'; sleep {secs}", log.display()),
            ],
            expected_ms: None,
        },
    };
    let bundle = |t: Task| Bundle {
        submitted: Timestamp::now(),
        tasks: vec![t],
        reply_to: Some(response.url().to_string()),
        options: Default::default(),
    };
    let rt = runtime();
    // Task 0: sent twice. Task 1: runs 3 s, its message reappears after 1 s.
    rt.block_on(queue.send(vec![
        bundle(task(0, "0")),
        bundle(task(0, "0")),
        bundle(task(1, "3")),
    ]))
    .unwrap();
    let workers = vec![
        worker(queue.url(), &table, "d1", "10s"),
        worker(queue.url(), &table, "d2", "10s"),
    ];
    // Wait until both tasks reported, then until the queue is empty (every
    // delivery handled), then check executions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reported = std::collections::HashSet::new();
    while reported.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "results never came: {reported:?}"
        );
        for (message, receipt) in rt
            .block_on(response.receive_results(10, Duration::from_secs(1)))
            .unwrap()
        {
            reported.extend(message.results.iter().map(|r| r.id));
            rt.block_on(response.delete_batch(vec![receipt])).unwrap();
        }
    }
    loop {
        let s = rt.block_on(queue.stats()).unwrap();
        if s.visible + s.in_flight + s.delayed == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never emptied: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for w in workers {
        stop(w);
    }
    let runs = executions(&log);
    assert_eq!(
        runs.get(&0),
        Some(&1),
        "task 0 ran {:?} times",
        runs.get(&0)
    );
    assert_eq!(
        runs.get(&1),
        Some(&1),
        "task 1 ran {:?} times",
        runs.get(&1)
    );
    rt.block_on(async {
        let _ = queue.delete().await;
        let _ = response.delete().await;
    });
}

/// Pauses a server process (SIGSTOP) for `pause`, then resumes it.
fn pause_server(pid_var: &str, pause: Duration) {
    let _stopped = StoppedServer::stop(pid_var);
    std::thread::sleep(pause);
}

fn survives_a_paused(pid_var: &str) {
    require_servers();
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let queue = create_queue(&unique("pause"), Duration::from_secs(10), None);
    let table = unique("ledger-pause");
    let (workload, log) = logging_workload(dir.path(), 300, "0.02");
    let results = dir.path().join("results.jsonl");
    let workers: Vec<Child> = (0..2)
        .map(|i| worker(queue.url(), &table, &format!("p{i}"), "20s"))
        .collect();
    let client = submit(&workload, queue.url(), &results);
    wait_for_executions(&log, 50, Duration::from_secs(60));
    pause_server(pid_var, Duration::from_secs(5));
    let out = finish(client, Duration::from_secs(180));
    for w in workers {
        stop(w);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Summary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary.succeeded, summary.not_run), (300, 0));
    let runs = executions(&log);
    assert_eq!(runs.len(), 300, "a task never ran");
    assert!(
        runs.values().all(|&n| n == 1),
        "a task ran twice: nothing died, so nothing may re-run"
    );
    queue_cleanup(&queue);
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_paused_sqs_server_delays_but_loses_nothing() {
    survives_a_paused("CLOUDKON_SQS_PID");
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_paused_dynamodb_server_delays_but_loses_nothing() {
    survives_a_paused("CLOUDKON_DYNAMODB_PID");
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_malformed_message_is_moved_aside_and_work_goes_on() {
    require_servers();
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let queue = create_queue(&unique("junk"), Duration::from_secs(5), Some(3));
    let table = unique("ledger-junk");
    let rt = runtime();
    rt.block_on(queue.send_bodies(vec![
        "not a cloudkon message".into(),
        "{\"json\": true}".into(),
    ]))
    .unwrap();
    let w = worker(queue.url(), &table, "j1", "3s");
    let (workload, _log) = logging_workload(dir.path(), 5, "0");
    let results = dir.path().join("results.jsonl");
    let out = finish(
        submit(&workload, queue.url(), &results),
        Duration::from_secs(60),
    );
    stop(w);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both junk messages sit in the dead-letter queue, not in the work queue.
    let dlq = rt
        .block_on(Aws::load())
        .sqs()
        .at(queue.dead_letter_url().expect("a DLQ"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut moved = Vec::new();
    while moved.len() < 2 {
        assert!(Instant::now() < deadline, "junk not moved aside: {moved:?}");
        for m in rt
            .block_on(dlq.receive_raw(10, Duration::from_secs(1)))
            .unwrap()
        {
            moved.push(m.body);
        }
    }
    moved.sort();
    assert_eq!(
        moved,
        vec![
            "not a cloudkon message".to_string(),
            "{\"json\": true}".to_string()
        ]
    );
    let s = rt.block_on(queue.stats()).unwrap();
    assert_eq!(s.visible + s.in_flight, 0, "{s:?}");
    queue_cleanup(&queue);
}

/// After a worker drained: a replacement worker `id` finishes the client's
/// run, which must succeed; its summary.
fn finish_on_a_replacement(client: Child, queue: &str, table: &str, id: &str) -> Summary {
    let replacement = worker(queue, table, id, "30s");
    let out = finish(client, Duration::from_secs(120));
    stop(replacement);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn sigterm_drains_a_worker_without_losing_or_rerunning_anything() {
    require_servers();
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let queue = create_queue(&unique("term"), Duration::from_secs(30), None);
    let table = unique("ledger-term");
    let (workload, log) = logging_workload(dir.path(), 200, "0.05");
    let results = dir.path().join("results.jsonl");
    let mut draining = worker(queue.url(), &table, "t1", "30s");
    let client = submit(&workload, queue.url(), &results);
    wait_for_executions(&log, 20, Duration::from_secs(60));
    // SIGTERM: stop receiving, finish running bundles, give prefetched ones back
    // at once (not after the 30 s visibility timeout or lease).
    let stopped_at = Instant::now();
    kill(Pid::from_raw(draining.id() as i32), Signal::SIGTERM).unwrap();
    let status = draining.wait().unwrap();
    assert!(
        status.success(),
        "the worker did not exit cleanly: {status}"
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(20),
        "drain took {:?}",
        stopped_at.elapsed()
    );
    let summary = finish_on_a_replacement(client, queue.url(), &table, "t2");
    assert_eq!((summary.succeeded, summary.not_run), (200, 0));
    let runs = executions(&log);
    assert_eq!(runs.len(), 200, "a task never ran");
    assert!(
        runs.values().all(|&n| n == 1),
        "a drained worker's task ran twice"
    );
    queue_cleanup(&queue);
}

/// Waits until `queue` holds nothing, visible or in flight, `within`.
fn wait_for_empty_queue(queue: &SqsQueue, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let stats = runtime().block_on(queue.stats()).unwrap();
        if stats.visible + stats.in_flight == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the queue still holds {stats:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn an_interrupted_submit_cancels_its_batch_on_the_workers() {
    require_servers();
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let queue = create_queue(&unique("cancel"), Duration::from_secs(30), None);
    let table = unique("ledger-cancel");
    // 40 s of work on the worker's 2 slots, in bundles of up to 100 tasks.
    let tasks = 800;
    let (workload, log) = logging_workload(dir.path(), tasks, "0.1");
    let results = dir.path().join("results.jsonl");
    let w = worker_with(
        queue.url(),
        &table,
        "c1",
        "30s",
        &["--cancel-check", "500ms"],
    );
    let client = submit_with(
        &workload,
        queue.url(),
        &results,
        &["--ledger-table", &table, "--slots", "2"],
    );
    wait_for_executions(&log, 10, Duration::from_secs(60));
    kill(Pid::from_raw(client.id() as i32), Signal::SIGINT).unwrap();
    let out = finish(client, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("stopping: cancelling the batch on the workers")
            && stderr
                .contains("cancelled: the workers leave the batch's tasks that have not started"),
        "{stderr}"
    );
    let ran_at_interrupt = executions(&log).len();
    // The worker deletes the batch's queued bundles unrun, and leaves the
    // tasks not started of the one it runs.
    wait_for_empty_queue(&queue, Duration::from_secs(60));
    stop(w);
    let ran = executions(&log).len();
    println!(
        "interrupted submit: {ran_at_interrupt} of {tasks} tasks ran by the interrupt, {ran} in all"
    );
    // What ran by the interrupt, what started before its signal was read,
    // and what the worker's 2 slots started until its next cancel check.
    assert!(
        ran <= ran_at_interrupt + 2 * 10,
        "{ran} of {tasks} tasks ran, {ran_at_interrupt} by the interrupt"
    );
    queue_cleanup(&queue);
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_submit_that_cannot_write_its_results_cancels_its_batch() {
    require_servers();
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let queue = create_queue(&unique("full"), Duration::from_secs(30), None);
    let table = unique("ledger-full");
    // 40 s of work on the worker's 2 slots; the results file is a full disk.
    let tasks = 800;
    let (workload, log) = logging_workload(dir.path(), tasks, "0.1");
    let w = worker_with(
        queue.url(),
        &table,
        "f1",
        "30s",
        &["--cancel-check", "500ms"],
    );
    let client = submit_with(
        &workload,
        queue.url(),
        Path::new("/dev/full"),
        &["--ledger-table", &table, "--slots", "2"],
    );
    let out = finish(client, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot write results")
            && stderr
                .contains("cancelled: the workers leave the batch's tasks that have not started"),
        "{stderr}"
    );
    // The worker deletes the batch's queued bundles unrun.
    wait_for_empty_queue(&queue, Duration::from_secs(60));
    stop(w);
    let ran = executions(&log).len();
    assert!(ran < tasks as usize / 2, "{ran} of {tasks} tasks ran");
    queue_cleanup(&queue);
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn an_idle_worker_exits_by_itself_and_leaves_a_heartbeat_row() {
    require_servers();
    let _serial = common::serial();
    let queue = create_queue(&unique("idle"), Duration::from_secs(30), None);
    let table = unique("ledger-idle");
    let started = Instant::now();
    let idle = Command::new(bin("cloudkon-worker"))
        .args([
            "--queue",
            queue.url(),
            "--ledger-table",
            &table,
            "--worker-id",
            "idler",
        ])
        .args([
            "--receive-wait",
            "1s",
            "--idle-timeout",
            "2s",
            "--metrics-addr",
            "off",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        idle.status.success(),
        "{}",
        String::from_utf8_lossy(&idle.stderr)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "{took:?}"
    );
    let workers = Command::new(env!("CARGO_BIN_EXE_cloudkon"))
        .args(["workers", "--ledger-table", &table])
        .output()
        .unwrap();
    assert!(
        workers.status.success(),
        "{}",
        String::from_utf8_lossy(&workers.stderr)
    );
    let listing = String::from_utf8_lossy(&workers.stdout);
    assert!(
        listing.lines().any(|l| l.starts_with("idler ")),
        "{listing}"
    );
    queue_cleanup(&queue);
}

/// Starts a worker on `queue` that gives up after 3 s, its termination
/// message to `log`, and waits until it runs (its heartbeat row is there).
fn giving_up_worker(queue: &str, table: &str, id: &str, log: &Path) -> Child {
    giving_up_worker_on(queue, table, id, log, None, "3s")
}

/// [`giving_up_worker`], its SQS requests sent to `sqs` when given, giving
/// up after `give_up_after`.
fn giving_up_worker_on(
    queue: &str,
    table: &str,
    id: &str,
    log: &Path,
    sqs: Option<&str>,
    give_up_after: &str,
) -> Child {
    std::fs::write(log, "").unwrap();
    let mut command = Command::new(bin("cloudkon-worker"));
    if let Some(sqs) = sqs {
        command.env("AWS_ENDPOINT_URL_SQS", sqs);
    }
    let mut worker = command
        .args(["--queue", queue, "--ledger-table", table])
        .args(["--worker-id", id, "--metrics-addr", "off"])
        .args(["--receive-wait", "1s", "--give-up-after", give_up_after])
        .env("CLOUDKON_TERMINATION_LOG", log)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(log.with_extension("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let row_written = || {
        let workers = Command::new(env!("CARGO_BIN_EXE_cloudkon"))
            .args(["workers", "--ledger-table", table])
            .output()
            .unwrap();
        String::from_utf8_lossy(&workers.stdout).contains(id)
    };
    while !row_written() {
        if Instant::now() > deadline {
            worker.kill().ok();
            worker.wait().ok();
            panic!("the worker never wrote its row");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    worker
}

/// Waits (a minute at most) for `worker` to exit: its exit code and
/// termination message, and how long after `since`.
fn gave_up(mut worker: Child, log: &Path, since: Instant) -> (Option<i32>, String, Duration) {
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > Duration::from_secs(60) {
            worker.kill().ok();
            worker.wait().ok();
            panic!(
                "the worker still runs a minute later: {}",
                std::fs::read_to_string(log.with_extension("stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status.code(),
        std::fs::read_to_string(log).unwrap(),
        since.elapsed(),
    )
}

/// A bundle of one `sleep 0`, task `id` of `batch`, its results to `reply_to`.
fn sleep_bundle(batch: &str, id: u64, reply_to: &str) -> Bundle {
    Bundle {
        submitted: Timestamp::now(),
        tasks: vec![Task {
            batch: BatchId::new(batch),
            id,
            attempt: 1,
            timeout: None,
            spec: TaskSpec::Sleep { ms: 0 },
        }],
        reply_to: Some(reply_to.to_string()),
        options: Default::default(),
    }
}

/// A worker whose queue goes away stops after `--give-up-after`, saying
/// why in its termination message (what Kubernetes shows of a pod that
/// stopped), instead of looking alive and running nothing.
#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_worker_that_cannot_receive_gives_up_and_says_why() {
    require_servers();
    let _serial = common::serial();
    let queue = create_queue(&unique("gone"), Duration::from_secs(30), None);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let worker = giving_up_worker(queue.url(), &unique("ledger-gone"), "gives-up", &log);
    queue_cleanup(&queue);
    let (code, message, took) = gave_up(worker, &log, Instant::now());
    assert_eq!(code, Some(1), "{message}");
    assert!(
        message.starts_with("error: cannot receive from the queue: every receive failed for "),
        "{message}"
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
    println!(
        "gave up {:.1} s after its queue was deleted: {message}",
        took.as_secs_f64()
    );
}

/// The same when the ledger stops answering: bundles come, none can be
/// claimed, and the worker, holding nothing, stops saying so.
#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_worker_that_cannot_claim_gives_up_and_says_why() {
    require_servers();
    let _serial = common::serial();
    let queue = create_queue(&unique("noclaim"), Duration::from_secs(30), None);
    let response = create_queue(&unique("noclaim-resp"), Duration::from_secs(30), None);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let worker = giving_up_worker(queue.url(), &unique("ledger-noclaim"), "no-claim", &log);
    let dynamodb = StoppedServer::stop("CLOUDKON_DYNAMODB_PID");
    let bundle = sleep_bundle("noclaim", 0, response.url());
    let rt = runtime();
    rt.block_on(queue.send(vec![bundle])).unwrap();
    let (code, message, took) = gave_up(worker, &log, Instant::now());
    drop(dynamodb);
    assert_eq!(code, Some(1), "{message}");
    assert!(
        message.starts_with("error: cannot claim bundles in the ledger: every claim failed for "),
        "{message}"
    );
    println!(
        "gave up {:.1} s after the ledger stopped answering: {message}",
        took.as_secs_f64()
    );
    rt.block_on(async {
        let _ = queue.delete().await;
        let _ = response.delete().await;
    });
}

/// IAM without `sqs:SendMessage` on the response queues, which a proxy in
/// front of the SQS server plays (refusing those sends with AccessDenied):
/// the worker runs its task, cannot report it, and stops past
/// `--give-up-after` saying why, giving the bundle back at once rather than
/// holding it unreported for ever; a worker that can send then reports it.
#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_worker_that_cannot_send_results_gives_up_and_gives_its_bundle_back() {
    require_servers();
    let _serial = common::serial();
    // Longer than the test: the bundle comes back only if given back.
    let queue = create_queue(&unique("nosend"), Duration::from_secs(120), None);
    let response = create_queue(&unique("nosend-resp"), Duration::from_secs(30), None);
    let name = response.url().rsplit('/').next().unwrap().to_string();
    let proxy = RefusingProxy::refusing_sends_to(&name);
    let table = unique("ledger-nosend");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let refused = giving_up_worker_on(
        queue.url(),
        &table,
        "no-send",
        &log,
        Some(&proxy.url()),
        "3s",
    );
    let bundle = sleep_bundle("nosend", 7, response.url());
    let rt = runtime();
    rt.block_on(queue.send(vec![bundle])).unwrap();
    let (code, message, took) = gave_up(refused, &log, Instant::now());
    assert_eq!(code, Some(1), "{message}");
    assert!(
        message.starts_with(
            "error: cannot send results to a batch's response queue: every send failed for "
        ),
        "{message}"
    );
    assert!(message.contains("AccessDenied"), "{message}");
    assert!(proxy.refused() >= 2, "{} sends refused", proxy.refused());
    println!(
        "gave up {:.1} s after its bundle was sent, {} sends refused: {message}",
        took.as_secs_f64(),
        proxy.refused()
    );
    let given_back = Instant::now();
    let next = worker(queue.url(), &table, "can-send", "10s");
    let mut reported = Vec::new();
    while reported.is_empty() {
        assert!(
            given_back.elapsed() < Duration::from_secs(60),
            "the bundle never came back"
        );
        for (message, receipt) in rt
            .block_on(response.receive_results(10, Duration::from_secs(1)))
            .unwrap()
        {
            reported.extend(
                message
                    .results
                    .iter()
                    .map(|r| (r.id, r.outcome.is_success())),
            );
            rt.block_on(response.delete_batch(vec![receipt])).unwrap();
        }
    }
    stop(next);
    assert_eq!(reported, vec![(7, true)]);
    println!(
        "reported by the next worker {:.1} s later",
        given_back.elapsed().as_secs_f64()
    );
    rt.block_on(async {
        let _ = queue.delete().await;
        let _ = response.delete().await;
    });
}

/// A policy on one batch's response queue refuses the worker's sends while
/// another batch's queue takes them (the proxy refuses `SendMessage*` to
/// that queue only): the worker goes on reporting the other batch, and past
/// `--give-up-after` gives the refused batch's bundle back, instead of
/// stopping, as a worker that can send nowhere does, and dropping both
/// batches' work; a worker that can send then reports it.
#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_worker_refused_by_one_batchs_response_queue_gives_that_batch_back_and_serves_the_others() {
    require_servers();
    let _serial = common::serial();
    // Longer than the test: the bundle comes back only if given back.
    let queue = create_queue(&unique("onesend"), Duration::from_secs(120), None);
    let refused = create_queue(&unique("onesend-refused"), Duration::from_secs(30), None);
    let open = create_queue(&unique("onesend-open"), Duration::from_secs(30), None);
    let name = refused.url().rsplit('/').next().unwrap().to_string();
    let proxy = RefusingProxy::refusing_sends_to(&name);
    let table = unique("ledger-onesend");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    // 10 s before giving up: time enough on a slow machine for some of the
    // other batch's results to reach the test before then.
    let mut refused_worker = giving_up_worker_on(
        queue.url(),
        &table,
        "one-refused",
        &log,
        Some(&proxy.url()),
        "10s",
    );
    let rt = runtime();
    rt.block_on(queue.send(vec![sleep_bundle("onesend-refused", 7, refused.url())]))
        .unwrap();
    // The other batch sends a bundle every 300 ms while the test runs.
    let started = Instant::now();
    let (mut sent, mut reported) = (0u64, Vec::new());
    let mut given_back = None;
    let mut can_send = None;
    let mut refused_result = None;
    while refused_result.is_none() {
        // The refused worker may take the given-back bundle again (a round
        // of --give-up-after each) before the other worker gets it.
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the refused batch's task was never reported; the worker logged:\n{}",
            std::fs::read_to_string(log.with_extension("stderr")).unwrap_or_default()
        );
        if let Some(status) = refused_worker.try_wait().unwrap() {
            panic!(
                "the worker stopped ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        rt.block_on(queue.send(vec![sleep_bundle("onesend-open", 100 + sent, open.url())]))
            .unwrap();
        sent += 1;
        for (message, receipt) in rt
            .block_on(open.receive_results(10, Duration::ZERO))
            .unwrap()
        {
            reported.extend(message.results.iter().map(|r| r.id));
            rt.block_on(open.delete_batch(vec![receipt])).unwrap();
        }
        for (message, receipt) in rt
            .block_on(refused.receive_results(10, Duration::ZERO))
            .unwrap()
        {
            refused_result = message.results.first().map(|r| {
                (
                    r.id,
                    r.outcome.is_success(),
                    r.worker.to_string(),
                    started.elapsed(),
                )
            });
            rt.block_on(refused.delete_batch(vec![receipt])).unwrap();
        }
        let logged = std::fs::read_to_string(log.with_extension("stderr")).unwrap_or_default();
        if given_back.is_none() && logged.contains("giving its batch's ended bundles back") {
            given_back = Some((started.elapsed(), reported.len()));
            can_send = Some(worker(queue.url(), &table, "can-send", "10s"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (given_back_at, reported_before) = given_back.expect("reported before it was given back");
    let (id, succeeded, by, reported_at) = refused_result.unwrap();
    assert_eq!((id, succeeded), (7, true));
    assert!(by.starts_with("can-send/"), "reported by {by}");
    assert!(
        reported_before >= 1,
        "the other batch's results waited behind the refused ones"
    );
    // Every one of the other batch's tasks reported, none lost.
    let drain = Instant::now();
    while reported.len() < sent as usize {
        assert!(
            drain.elapsed() < Duration::from_secs(30),
            "{} of {sent} reported",
            reported.len()
        );
        for (message, receipt) in rt
            .block_on(open.receive_results(10, Duration::from_secs(1)))
            .unwrap()
        {
            reported.extend(message.results.iter().map(|r| r.id));
            rt.block_on(open.delete_batch(vec![receipt])).unwrap();
        }
    }
    reported.sort_unstable();
    reported.dedup();
    assert_eq!(reported, (100..100 + sent).collect::<Vec<_>>());
    assert!(
        refused_worker.try_wait().unwrap().is_none(),
        "the refused worker stopped: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(proxy.refused() >= 2, "{} sends refused", proxy.refused());
    println!(
        "given back {:.1} s in ({} sends refused; {reported_before} of the other batch's results sent by then), reported by {by} {:.1} s later; {sent} of the other batch's reported",
        given_back_at.as_secs_f64(),
        proxy.refused(),
        (reported_at - given_back_at).as_secs_f64(),
    );
    stop(refused_worker);
    if let Some(w) = can_send {
        stop(w);
    }
    rt.block_on(async {
        let _ = queue.delete().await;
        let _ = refused.delete().await;
        let _ = open.delete().await;
    });
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn queue_commands_create_inspect_and_delete() {
    require_servers();
    let _serial = common::serial();
    let name = unique("cli-queue");
    let cloudkon = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cloudkon"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = cloudkon(&["queue", "create", &name, "--max-receives", "4"]);
    assert!(url.trim().ends_with(&name), "{url}");
    // Created again without --max-receives, the queue keeps its dead-letter
    // queue: the command must say so rather than print nothing about it.
    let again = Command::new(env!("CARGO_BIN_EXE_cloudkon"))
        .args(["queue", "create", &name])
        .output()
        .unwrap();
    assert!(again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains(&format!("{name}-dlq")) && said.contains("kept from before"),
        "{said}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&cloudkon(&["queue", "stats", &name, "--json"])).unwrap();
    assert_eq!(stats["visible"], 0);
    cloudkon(&["queue", "delete", &name]);
    let missing = Command::new(env!("CARGO_BIN_EXE_cloudkon"))
        .args(["queue", "stats", &name])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(&format!("cannot open queue `{name}`")),
        "{err}"
    );
}

#[test]
fn submit_to_an_unreachable_queue_server_fails_clearly() {
    // No servers needed: the endpoint points at a closed port.
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("w.txt");
    std::fs::write(&workload, "sleep 0\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudkon"))
        .arg("submit")
        .arg(&workload)
        .args(["--queue", "nowhere"])
        .env("AWS_ENDPOINT_URL_SQS", format!("http://127.0.0.1:{port}"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the request queue `nowhere`"),
        "{err}"
    );
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_spot_notice_drains_a_worker_and_reruns_only_what_could_not_finish() {
    use cloudkon_worker::loopback_http::{LoopbackServer, Reply};
    use std::sync::{Arc, Mutex};

    require_servers();
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let queue = create_queue(&unique("spot"), Duration::from_secs(30), None);
    let table = unique("ledger-spot");
    // Task 0 takes 60 s the first time, far more than the worker has left
    // after the notice (so a worker that does not abandon it in time is seen),
    // and no time when run again; tasks 1..=100 take 0.05 s.
    let log = dir.path().join("executions.log");
    let workload = dir.path().join("w.txt");
    let line = |i: u64, secs: &str| {
        format!(
            "run sh -c 'echo {i} >> \"$0\"; sleep {secs}' {}\n",
            log.display()
        )
    };
    let long = format!(
        "run sh -c 'echo 0 >> \"$0\"; [ \"$(grep -cx 0 \"$0\")\" -gt 1 ] || sleep 60' {}\n",
        log.display()
    );
    let text: String = std::iter::once(long)
        .chain((1..=100).map(|i| line(i, "0.05")))
        .collect();
    std::fs::write(&workload, text).unwrap();
    // The instance metadata service (IMDSv2, on loopback): a token, then no
    // notice until the test gives one.
    let rt = runtime();
    let notice: Arc<Mutex<Option<String>>> = Arc::default();
    let shown = notice.clone();
    let metadata = rt
        .block_on(LoopbackServer::start(move |path| match path {
            "/latest/api/token" => Reply::ok("text/plain", b"token".to_vec()),
            "/latest/meta-data/spot/instance-action" => match shown.lock().unwrap().clone() {
                Some(body) => Reply::ok("application/json", body.into_bytes()),
                None => Reply {
                    status: 404,
                    ..Reply::ok("text/plain", Vec::new())
                },
            },
            _ => Reply {
                status: 404,
                ..Reply::ok("text/plain", Vec::new())
            },
        }))
        .unwrap();
    let results = dir.path().join("results.jsonl");
    let endpoint = metadata.url("");
    let mut spot = common::worker_with(
        queue.url(),
        &table,
        "spot1",
        "30s",
        &[
            "--spot-metadata",
            endpoint.trim_end_matches('/'),
            "--spot-poll",
            "200ms",
            "--spot-margin",
            "8s",
        ],
    );
    let client = submit(&workload, queue.url(), &results);
    wait_for_executions(&log, 20, Duration::from_secs(60));
    assert!(executions(&log).contains_key(&0), "the long task runs");
    // Two minutes' notice, scaled down: the instance goes in 15 s. Running
    // tasks are abandoned 8 s before (about 7 s from now, while task 0 still
    // runs), which leaves a slow machine 8 s to give task 0 back and exit; a
    // worker that ignored the margin would still be at work at `at`.
    let at = std::time::SystemTime::now() + Duration::from_secs(15);
    *notice.lock().unwrap() = Some(format!(
        r#"{{"action": "terminate", "time": "{}"}}"#,
        humantime::format_rfc3339(at)
    ));
    let status = spot.wait().unwrap();
    assert!(
        status.success(),
        "the worker did not exit cleanly: {status}"
    );
    assert!(
        std::time::SystemTime::now() < at,
        "the worker was still at work when the instance went"
    );
    let summary = finish_on_a_replacement(client, queue.url(), &table, "spot2");
    assert_eq!((summary.succeeded, summary.not_run), (101, 0));
    // Nothing lost; only the task that could not finish ran again.
    let runs = executions(&log);
    assert_eq!(runs.len(), 101, "a task never ran");
    let again: Vec<u64> = runs
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(again, vec![0], "re-run: {again:?}");
    assert_eq!(runs[&0], 2);
    queue_cleanup(&queue);
}
