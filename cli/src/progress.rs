//! Progress display: a bar on a terminal, a plain line now and then otherwise
//! (so that logs of CI jobs and `nohup` runs stay readable).

use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudkon_core::summary::format_rate;
use cloudkon_worker::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Display {
    done: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Display {
    pub fn start(total: u64, progress: Arc<Progress>, quiet: bool) -> Self {
        let done = CancellationToken::new();
        let task = if quiet {
            tokio::spawn(async {})
        } else if std::io::stderr().is_terminal() {
            tokio::spawn(bar(total, progress, done.clone()))
        } else {
            tokio::spawn(plain(total, progress, done.clone()))
        };
        Self { done, task }
    }

    pub async fn finish(self) {
        self.done.cancel();
        let _ = self.task.await;
    }
}

async fn bar(total: u64, progress: Arc<Progress>, done: CancellationToken) {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} {rate} {msg}",
        )
        .expect("valid template")
        // Three significant digits, as the summary says it (indicatif's
        // `per_sec` shows four decimals).
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/s", format_rate(state.per_sec()));
            },
        )
        .progress_chars("=> "),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => {},
        }
        bar.set_position(progress.done());
        let failed = progress.failed();
        if failed > 0 {
            bar.set_message(format!("{failed} failed"));
        }
    }
    bar.set_position(progress.done());
    bar.abandon();
    // The bar's line is left without an end: the summary that follows
    // would start on it.
    let _ = writeln!(std::io::stderr());
}

async fn plain(total: u64, progress: Arc<Progress>, done: CancellationToken) {
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PLAIN_EVERY, PLAIN_EVERY);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {},
        }
        let n = progress.done();
        let rate = n as f64 / start.elapsed().as_secs_f64();
        let pct = if total > 0 {
            n as f64 * 100.0 / total as f64
        } else {
            100.0
        };
        say!(
            "progress: {n}/{total} ({pct:.1}%), {} failed, {} tasks/s",
            progress.failed(),
            format_rate(rate)
        );
    }
}
