//! The `run` task: a program started directly (no shell), in its own process
//! group so that a timeout or an abort kills everything it started.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;

use super::{ExecLimits, ExecOutput, OutputTail};

/// How long output pipes may stay open after the process group is gone (a process
/// that left the group, e.g. with `setsid`, can hold them): bounded so that such a
/// task never hangs its slot.
const PIPE_GRACE: Duration = Duration::from_secs(2);

pub async fn run(program: &str, args: &[String], limits: ExecLimits) -> ExecOutput {
    let mut command = Command::new(program);
    command.args(args);
    run_command(command, program, limits).await
}

/// Runs a prepared command (program, arguments, working directory) the way `run`
/// tasks run: own process group, bounded output, timeout. Other executors that
/// drive a program (ffmpeg for Animoto) reuse it. `program` names it in errors.
pub(crate) async fn run_command(
    mut command: Command,
    program: &str,
    limits: ExecLimits,
) -> ExecOutput {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let mut failed = ExecOutput::failed(format!("cannot start `{program}`: {e}"));
            failed.retry_futile = matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            );
            return failed;
        }
    };
    let mut group = GroupGuard(child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut out = OutputTail::new(limits.output_bytes);
    let mut err = OutputTail::new(limits.output_bytes);

    let waiter = async {
        let status = match limits.timeout {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        // On exit: background children it left behind; on timeout: everything.
        group.kill();
        match status {
            Some(status) => Some(status),
            None => {
                let _ = child.wait().await;
                None
            }
        }
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let readers = async {
        let read_all = async {
            tokio::join!(
                async {
                    if let Some(s) = stdout {
                        out.fill(s).await;
                    }
                },
                async {
                    if let Some(s) = stderr {
                        err.fill(s).await;
                    }
                }
            )
        };
        let grace = async {
            let _ = done_rx.await;
            tokio::time::sleep(PIPE_GRACE).await;
        };
        tokio::select! {
            _ = read_all => {},
            _ = grace => {},
        }
    };
    let waiter = async {
        let status = waiter.await;
        let _ = done_tx.send(());
        status
    };
    let (status, ()) = tokio::join!(waiter, readers);
    group.disarm();

    let mut output = match status {
        None => ExecOutput::timed_out(),
        Some(Err(e)) => ExecOutput::failed(format!("cannot wait for `{program}`: {e}")),
        Some(Ok(status)) => from_status(status),
    };
    output.truncated = out.truncated() || err.truncated();
    output.stdout = out.into_string();
    output.stderr = err.into_string();
    output
}

fn from_status(status: ExitStatus) -> ExecOutput {
    if status.success() {
        let mut out = ExecOutput::succeeded();
        out.exit_code = Some(0);
        return out;
    }
    if let Some(code) = status.code() {
        let mut out = ExecOutput::failed(format!("exit status {code}"));
        out.exit_code = Some(code);
        return out;
    }
    match status.signal() {
        Some(sig) => {
            let name =
                Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.as_str().to_string());
            ExecOutput::failed(format!("killed by signal {name}"))
        }
        None => ExecOutput::failed(format!("ended abnormally ({status})")),
    }
}

/// Kills the task's process group: explicitly when the leader exits or times out,
/// and on drop when the task is abandoned mid-run.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.and_then(|id| i32::try_from(id).ok()) {
            // ESRCH (the group is already gone) is the common, fine case.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }

    /// The leader is reaped: its id may be reused, so never signal it again.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use cloudkon_core::Outcome;

    fn limits(timeout_ms: Option<u64>, output_bytes: usize) -> ExecLimits {
        ExecLimits {
            timeout: timeout_ms.map(Duration::from_millis),
            output_bytes,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn success_captures_output_and_exit_code() {
        let out = run("sh", &sh("echo out; echo err >&2"), limits(None, 1024)).await;
        assert_eq!(out.outcome, Outcome::Succeeded);
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.truncated);
    }

    #[tokio::test]
    async fn arguments_are_passed_verbatim_without_a_shell() {
        let args = vec!["a b".to_string(), "$HOME".to_string(), "*".to_string()];
        let out = run(
            "printf",
            &["%s|".to_string()]
                .into_iter()
                .chain(args)
                .collect::<Vec<_>>(),
            limits(None, 1024),
        )
        .await;
        assert_eq!(out.stdout, "a b|$HOME|*|");
    }

    #[tokio::test]
    async fn non_zero_exit_is_a_failure_with_its_code() {
        let out = run("sh", &sh("echo bad >&2; exit 3"), limits(None, 1024)).await;
        assert_eq!(
            out.outcome,
            Outcome::Failed {
                reason: "exit status 3".into()
            }
        );
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stderr, "bad\n");
    }

    #[tokio::test]
    async fn death_by_signal_is_named() {
        let out = run("sh", &sh("kill -SEGV $$"), limits(None, 1024)).await;
        assert_eq!(
            out.outcome,
            Outcome::Failed {
                reason: "killed by signal SIGSEGV".into()
            }
        );
        assert_eq!(out.exit_code, None);
    }

    #[tokio::test]
    async fn missing_program_is_a_clear_failure() {
        let out = run("/nonexistent/prog", &[], limits(None, 1024)).await;
        let Outcome::Failed { reason } = out.outcome else {
            panic!("{out:?}")
        };
        assert!(
            reason.starts_with("cannot start `/nonexistent/prog`: No such file"),
            "{reason}"
        );
        assert!(out.retry_futile);
    }

    /// Waits (bounded) until `pid` is gone or a zombie; false if it still runs.
    async fn dies(pid: i32) -> bool {
        for _ in 0..500 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat)
                    if stat
                        .rsplit(')')
                        .next()
                        .is_some_and(|s| s.trim_start().starts_with('Z')) =>
                {
                    return true;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        false
    }

    fn read_pid(path: &std::path::Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group_and_keeps_partial_output() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        // The pidfile appears (whole) once the output and the grandchild are
        // there. A machine too busy to get that far before the timeout gets
        // a longer one.
        let script = format!(
            "echo started; sleep 120 & echo $! > {0}.tmp; mv {0}.tmp {0}; wait",
            pidfile.display()
        );
        let mut timeout_ms = 1000;
        while !pidfile.exists() {
            assert!(timeout_ms <= 16_000, "the script never got going");
            let start = Instant::now();
            let out = run("sh", &sh(&script), limits(Some(timeout_ms), 1024)).await;
            assert_eq!(out.outcome, Outcome::TimedOut);
            assert_eq!(out.exit_code, None);
            if pidfile.exists() {
                assert_eq!(out.stdout, "started\n");
            }
            // Not waiting for the grandchild's 120 s: the group was killed.
            assert!(
                start.elapsed() < Duration::from_millis(timeout_ms + 30_000),
                "{:?}",
                start.elapsed()
            );
            timeout_ms *= 4;
        }
        assert!(
            dies(read_pid(&pidfile)).await,
            "a process of the timed-out task survived"
        );
    }

    #[tokio::test]
    async fn background_children_do_not_hold_the_task_open() {
        let start = Instant::now();
        let out = run("sh", &sh("sleep 30 & echo done"), limits(None, 1024)).await;
        assert_eq!(out.outcome, Outcome::Succeeded);
        assert_eq!(out.stdout, "done\n");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn output_is_bounded_to_its_tail() {
        let out = run("sh", &sh("seq 1 100000"), limits(None, 16)).await;
        assert_eq!(out.outcome, Outcome::Succeeded);
        assert!(out.truncated);
        assert_eq!(out.stdout, "98\n99999\n100000\n");
    }

    #[tokio::test]
    async fn abandoning_a_task_kills_its_processes() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!(
            "sleep 30 & echo $! > {}.tmp; mv {0}.tmp {0}; wait",
            pidfile.display()
        );
        let args = sh(&script);
        let mut fut = Box::pin(run("sh", &args, limits(None, 1024)));
        // Drive the task until its grandchild exists, then drop it as a second Ctrl-C does.
        let mut waited = 0;
        while !pidfile.exists() {
            assert!(
                tokio::time::timeout(Duration::from_millis(10), &mut fut)
                    .await
                    .is_err()
            );
            waited += 1;
            assert!(waited < 1000, "the task never started its child");
        }
        drop(fut);
        assert!(
            dies(read_pid(&pidfile)).await,
            "a process of the abandoned task survived"
        );
    }
}
