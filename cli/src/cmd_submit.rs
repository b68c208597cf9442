//! `cloudkon submit`: a workload through SQS to remote workers, results back
//! through a response queue made for the batch.

use std::collections::HashSet;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloudkon_core::aws::{Aws, QueueOptions, SqsClient, SqsQueue};
use cloudkon_core::ledger::DedupLedger;
use cloudkon_core::queue::{QueueError, TaskQueue};
use cloudkon_core::workload::WorkloadReader;
use cloudkon_core::{BatchId, Bundle, BundlePlan, IdSet, Stats, Summary};
use cloudkon_worker::{Progress, Shutdown};

use crate::{batch_args, exit, memory, outcome, progress, results_file, signals, workload_file};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: as for `cloudkon run`.")]
pub struct SubmitArgs {
    /// The workload file.
    pub workload: PathBuf,

    /// The request queue the workers read: its URL or name.
    #[arg(long, env = "CLOUDKON_QUEUE")]
    pub queue: String,

    /// Task slots of the workers that will run the batch, all together: bundles
    /// hold about the remaining tasks over twice this, so they shrink towards
    /// the end and the last ones leave no slot idle for long.
    #[arg(long, env = "CLOUDKON_SLOTS", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub slots: u64,

    /// The workers' ledger table (their `--ledger-table`): an interrupted
    /// submit marks its batch cancelled there, so that the workers leave
    /// its tasks that have not started.
    #[arg(long, env = "CLOUDKON_LEDGER_TABLE", default_value = "cloudkon-ledger")]
    pub ledger_table: String,

    #[command(flatten)]
    pub common: batch_args::BatchArgs,
}

pub fn run(args: SubmitArgs) -> Result<ExitCode> {
    let stats = match workload_file::validate(
        &args.workload,
        args.common.output.as_deref(),
        workload_file::Destination::Queue,
    ) {
        Ok(stats) => stats,
        Err(code) => return Ok(code),
    };
    let writer = results_file::create_results(args.common.output.as_deref())?;
    let batch = args.common.batch_name(&args.workload);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (mut summary, response_url, cancelled) = runtime.block_on(async {
        let aws = Aws::load().await;
        let sqs = aws.sqs();
        let request = sqs
            .open(&args.queue)
            .await
            .with_context(|| format!("cannot open the request queue `{}`", args.queue))?;
        let shutdown = Shutdown::new();
        let signals =
            signals::spawn_submit_handler(shutdown.clone()).context("cannot handle signals")?;
        let progress = Arc::new(Progress::default());
        let display = progress::Display::start(stats.tasks, progress.clone(), args.common.json);
        let outcome = submit(
            &sqs,
            &request,
            Submission {
                workload: args.workload.clone(),
                total: stats.tasks,
                batch: BatchId::new(batch.clone()),
                timeout: args.common.timeout,
                slots: args.slots,
            },
            writer.clone(),
            progress,
            &shutdown,
        )
        .await;
        display.finish().await;
        signals.abort();
        let (summary, response) = match outcome {
            Ok(done) => done,
            // Stopped on an error (results that cannot be written, a workload
            // that changed): what was sent would run for nobody, its results
            // piling up in a queue nobody reads. Cancelled as on Ctrl-C.
            Err(e) => {
                if let Ok(response) = sqs.open(&response_queue_name(&batch)).await {
                    match cancel(&aws, &args.ledger_table, &batch, &response).await {
                        Ok(()) => say!(
                            "cancelled: the workers leave the batch's tasks that have not started"
                        ),
                        Err(c) => say!("{c:#}: the batch's remaining tasks stay queued"),
                    }
                }
                return Err(e);
            }
        };
        let cancelled = if summary.interrupted {
            Some(cancel(&aws, &args.ledger_table, &batch, &response).await)
        } else {
            None
        };
        anyhow::Ok((summary, response.url().to_string(), cancelled))
    })?;
    let flushed = results_file::flush_results(writer.as_ref());
    summary.peak_rss_bytes = memory::peak_rss_bytes();
    outcome::print_summary(&summary, args.common.json)?;
    match cancelled {
        Some(Ok(())) => say!(
            "cancelled: the workers leave the batch's tasks that have not started (its mark is in \
             the ledger table `{}`), and drop the results of those still running",
            args.ledger_table
        ),
        Some(Err(e)) => say!(
            "{e:#}: the batch's remaining tasks stay queued; their results go to {response_url} \
             (delete it with `cloudkon queue delete {response_url}`)"
        ),
        None => {}
    }
    if let Err(e) = flushed {
        say!("error: cannot write results: {e}");
        return Ok(ExitCode::from(exit::ERROR));
    }
    Ok(outcome::finish(&summary))
}

/// Marks an interrupted batch cancelled in the workers' ledger, so that they
/// delete its queued bundles unrun and leave the tasks not started of those
/// they run, then deletes its response queue: a worker drops the results of
/// a cancelled batch whose queue is gone, as of a deleted TaskBatch. When
/// the mark cannot be written the queue is kept, for the results to come.
async fn cancel(aws: &Aws, table: &str, batch: &str, response: &SqsQueue) -> Result<()> {
    aws.ledger(table)
        .cancel_batch(batch)
        .await
        .with_context(|| {
            format!("cannot mark the batch cancelled in the ledger table `{table}`")
        })?;
    if let Err(e) = response.delete().await {
        tracing::warn!(error = %e, queue = response.url(), "could not delete the response queue");
    }
    Ok(())
}

/// What to submit.
pub struct Submission {
    pub workload: PathBuf,
    pub total: u64,
    pub batch: BatchId,
    pub timeout: Option<Duration>,
    /// The workers' slots, all together (see `SubmitArgs::slots`).
    pub slots: u64,
}

/// Bundles sent per call (the queue splits them into requests of ten).
const SEND_GROUP: usize = 100;

/// Sends a workload and waits for all its results. Returns the summary and the
/// response queue (deleted unless the wait was interrupted).
pub async fn submit(
    sqs: &SqsClient,
    request: &SqsQueue,
    submission: Submission,
    results_file: Option<results_file::ResultsWriter>,
    progress: Arc<Progress>,
    shutdown: &Shutdown,
) -> Result<(Summary, SqsQueue)> {
    let name = response_queue_name(submission.batch.as_str());
    let response = sqs
        .create_queue(&name, &QueueOptions::default())
        .await
        .with_context(|| format!("cannot create the response queue `{name}`"))?;
    let reply_to = response.url().to_string();
    let start = Instant::now();

    // Parse and bundle on a thread; send from here, a group at a time.
    let (bundles_tx, bundles_rx) = async_channel::bounded::<Bundle>(SEND_GROUP * 2);
    // How the reading ended: collect waits for no results of tasks never sent.
    // The reading's outcome, and the sending's if a send is refused for good.
    let (produced_tx, produced_rx) = std::sync::mpsc::channel::<Result<u64>>();
    let refused_tx = produced_tx.clone();
    let producer = {
        let (path, batch, timeout, reply_to) = (
            submission.workload.clone(),
            submission.batch.clone(),
            submission.timeout,
            reply_to.clone(),
        );
        let plan = BundlePlan::SQS.spread(submission.total, submission.slots);
        std::thread::spawn(move || {
            let read = || -> Result<Option<u64>> {
                let tasks = WorkloadReader::open(&path)?
                    .map(|def| def.context("the workload changed while it was sent"));
                let mut sent = 0;
                for bundle in cloudkon_core::bundle::bundles(tasks, batch, plan, 0, timeout) {
                    let mut bundle = bundle?;
                    bundle.reply_to = Some(reply_to.clone());
                    sent += bundle.tasks.len() as u64;
                    if bundles_tx.send_blocking(bundle).is_err() {
                        return Ok(None); // The sending stopped: nothing to say.
                    }
                }
                Ok(Some(sent))
            };
            if let Some(outcome) = read().transpose() {
                let _ = produced_tx.send(outcome);
            }
        })
    };
    let sender = {
        let request = request.clone();
        let stop = shutdown.stop.clone();
        tokio::spawn(async move {
            while let Ok(first) = bundles_rx.recv().await {
                let mut group = vec![first];
                while group.len() < SEND_GROUP {
                    match bundles_rx.try_recv() {
                        Ok(bundle) => group.push(bundle),
                        Err(_) => break,
                    }
                }
                // Retried until sent: a gap here would leave tasks nobody runs.
                let mut backoff = Duration::from_millis(100);
                while let Err(e) = request.send(group.clone()).await {
                    if let QueueError::Refused(_) = e {
                        // Asking again gets the same answer: the run ends.
                        let _ = refused_tx.send(Err(anyhow::anyhow!("sending tasks: {e}")));
                        return;
                    }
                    tracing::warn!(error = %e, "sending tasks failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        })
    };

    let collected = collect(
        &response,
        &submission.batch,
        submission.total,
        &produced_rx,
        results_file,
        &progress,
        shutdown,
    )
    .await;
    sender.abort();
    let _ = sender.await;
    let _ = tokio::task::spawn_blocking(move || producer.join()).await;
    let (stats, slots) = collected?;
    if let Ok(outcome) = produced_rx.try_recv() {
        all_sent(outcome, submission.total)?;
    }
    let interrupted = shutdown.stop.is_cancelled();
    if !interrupted && let Err(e) = response.delete().await {
        tracing::warn!(error = %e, "could not delete the response queue");
    }
    let summary = stats.summary(submission.total, slots.max(1), start.elapsed(), interrupted);
    Ok((summary, response))
}

/// Whether the reading for the send gave every task the check counted: else
/// some never went, and their results would be waited for for ever.
fn all_sent(produced: Result<u64>, total: u64) -> Result<()> {
    let sent = produced?;
    anyhow::ensure!(
        sent == total,
        "the workload changed while it was sent: {sent} tasks read, {total} when it was checked"
    );
    Ok(())
}

/// Receives results until every task has one, counting each task once however
/// often its results arrive; ends with an error when the reading for the send
/// failed or came short, or a send was refused for good (`produced`).
async fn collect(
    response: &SqsQueue,
    batch: &BatchId,
    total: u64,
    produced: &std::sync::mpsc::Receiver<Result<u64>>,
    mut results_file: Option<results_file::ResultsWriter>,
    progress: &Progress,
    shutdown: &Shutdown,
) -> Result<(Stats, usize)> {
    let mut stats = Stats::new();
    let mut seen = IdSet::new();
    let mut done = 0u64;
    let mut slots: HashSet<Arc<str>> = HashSet::new();
    // Looked at between receives, at most a long poll late: a receive cut
    // short could hide its messages for the queue's visibility timeout.
    let mut reading = true;
    while done < total {
        if reading {
            match produced.try_recv() {
                // Read until both the reading and the sending are done.
                Ok(outcome) => all_sent(outcome, total)?,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => reading = false,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
        }
        let received = tokio::select! {
            _ = shutdown.stop.cancelled() => break,
            received = response.receive_results(10, Duration::from_secs(5)) => received,
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "receiving results failed; retrying");
                tokio::select! {
                    _ = shutdown.stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut receipts = Vec::with_capacity(messages.len());
        for (message, receipt) in messages {
            receipts.push(receipt);
            let mut new = 0;
            for result in &message.results {
                if result.batch != *batch || result.id >= total || !seen.insert(result.id) {
                    continue; // A duplicate (re-sent results), or not of this batch.
                }
                new += 1;
                stats.record(result);
                slots.insert(result.worker.clone());
                if !result.outcome.is_success() {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(writer) = results_file.as_mut() {
                    writer.write(result).context("cannot write results")?;
                }
            }
            if new > 0 {
                stats.add_ideal(message.ideal);
            }
            done += new;
            progress.done.fetch_add(new, Ordering::Relaxed);
        }
        if !receipts.is_empty()
            && let Err(e) = response.delete_batch(receipts).await
        {
            // Counted already; a redelivery is skipped as a duplicate.
            tracing::warn!(error = %e, "could not delete result messages");
        }
    }
    Ok((stats, slots.len()))
}

/// SQS queue names: up to 80 letters, digits, `-` and `_`.
pub fn response_queue_name(batch: &str) -> String {
    cloudkon_core::aws::bounded_queue_name(&format!("cloudkon-resp-{batch}"), 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_that_failed_or_came_short_is_an_error() {
        assert!(all_sent(Ok(3), 3).is_ok());
        let short = all_sent(Ok(2), 3).unwrap_err().to_string();
        assert!(
            short.contains("2 tasks read, 3 when it was checked"),
            "{short}"
        );
        let failed = all_sent(Err(anyhow::anyhow!("cannot read")), 3).unwrap_err();
        assert_eq!(failed.to_string(), "cannot read");
    }

    #[test]
    fn response_queue_names_are_valid_sqs_names() {
        assert_eq!(response_queue_name("sweep-17"), "cloudkon-resp-sweep-17");
        // Names SQS would refuse, or too long for it, keep a hash of the
        // whole name: batches that differ only there get queues of their own.
        let odd = response_queue_name("a b/c.d");
        assert!(odd.starts_with("cloudkon-resp-a-b-c-d-"), "{odd}");
        assert_ne!(odd, response_queue_name("a-b-c-d"));
        let long = response_queue_name(&"x".repeat(200));
        assert_eq!(long.len(), 80);
        assert_ne!(long, response_queue_name(&format!("{}y", "x".repeat(199))));
        assert!(long.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
