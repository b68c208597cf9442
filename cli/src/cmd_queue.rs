//! `cloudkon queue` and `cloudkon workers`: the request queue and the workers'
//! heartbeat rows.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cloudkon_core::Timestamp;
use cloudkon_core::aws::{Aws, QueueOptions};

#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Create a request queue, or give the existing one these settings, and print its URL.
    Create {
        name: String,
        /// How long a received bundle stays hidden before it is delivered again;
        /// keep it at least the workers' --lease. SQS counts whole seconds:
        /// a fraction is rounded up (500ms is 1s). At most 12h.
        #[arg(long, default_value = "60s", value_parser = parse_visibility)]
        visibility: Duration,
        /// Also create `<name>-dlq` and move a bundle there after this many receives.
        /// Without it, an existing queue keeps the dead-letter queue it has.
        #[arg(long, value_name = "N")]
        max_receives: Option<u32>,
    },
    /// Delete a queue (its dead-letter queue is left alone).
    Delete { queue: String },
    /// Remove every message from a queue.
    Purge { queue: String },
    /// Approximate counts: waiting, in flight, delayed.
    Stats {
        queue: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// SQS's longest visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// A visibility timeout: a duration of at most SQS's 12 hours (more would
/// be refused by SQS, or cut to 12 hours by a receive).
fn parse_visibility(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if timeout > MAX_VISIBILITY {
        return Err("SQS hides a message at most 12h".into());
    }
    Ok(timeout)
}

pub fn run(command: QueueCommand) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let sqs = Aws::load().await.sqs();
        match command {
            QueueCommand::Create {
                name,
                visibility,
                max_receives,
            } => {
                let options = QueueOptions {
                    visibility_timeout: visibility,
                    max_receives,
                    ..QueueOptions::default()
                };
                let queue = sqs
                    .create_queue(&name, &options)
                    .await
                    .with_context(|| format!("cannot create queue `{name}`"))?;
                println!("{}", queue.url());
                if let Some(dlq) = queue.dead_letter_url() {
                    say!("dead-letter queue: {dlq}");
                } else if let Some(dlq) = kept_dead_letter_queue(&sqs, queue.url()).await? {
                    // SetQueueAttributes leaves a redrive policy it is not
                    // given: say so, or the user believes there is none.
                    say!(
                        "dead-letter queue: {dlq} (kept from before: give --max-receives to change how many receives move a bundle there)"
                    );
                }
            }
            QueueCommand::Delete { queue } => {
                let q = sqs.open(&queue).await.with_context(|| format!("cannot open queue `{queue}`"))?;
                q.delete().await.with_context(|| format!("cannot delete queue `{queue}`"))?;
                say!("deleted {}", q.url());
            }
            QueueCommand::Purge { queue } => {
                let q = sqs.open(&queue).await.with_context(|| format!("cannot open queue `{queue}`"))?;
                q.purge().await.with_context(|| format!("cannot purge queue `{queue}`"))?;
                say!("purged {}", q.url());
            }
            QueueCommand::Stats { queue, json } => {
                let q = sqs.open(&queue).await.with_context(|| format!("cannot open queue `{queue}`"))?;
                let s = q.stats().await.with_context(|| format!("cannot read queue `{queue}`"))?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"url": q.url(), "visible": s.visible, "in_flight": s.in_flight, "delayed": s.delayed})
                    );
                } else {
                    println!("{}\nwaiting {}  in flight {}  delayed {}", q.url(), s.visible, s.in_flight, s.delayed);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The dead-letter queue an existing queue already had, which a create
/// without `--max-receives` leaves in place.
async fn kept_dead_letter_queue(
    sqs: &cloudkon_core::aws::SqsClient,
    url: &str,
) -> Result<Option<String>> {
    let queue = sqs
        .open(url)
        .await
        .with_context(|| format!("cannot read the settings of queue `{url}`"))?;
    Ok(queue.dead_letter_url().map(str::to_owned))
}

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    /// The ledger table the workers use (their rows are in `<table>-workers`).
    #[arg(long, env = "CLOUDKON_LEDGER_TABLE", default_value = "cloudkon-ledger")]
    ledger_table: String,
}

/// Lists workers by their heartbeat rows: the paper's monitoring view.
pub fn workers(args: WorkersArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let ledger = Aws::load().await.ledger(args.ledger_table.clone());
        let mut rows = ledger.list_workers().await.with_context(|| {
            format!("cannot read the workers of ledger `{}`", args.ledger_table)
        })?;
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        println!(
            "{:<32} {:<20} {:>6} {:>5} {:>10} {:>9}",
            "WORKER", "HOST", "SLOTS", "BUSY", "TASKS", "SEEN"
        );
        let now = Timestamp::now();
        for w in rows {
            let seen = now.since(w.last_seen).as_secs();
            println!(
                "{:<32} {:<20} {:>6} {:>5} {:>10} {:>8}s",
                w.id, w.host, w.slots, w.busy, w.tasks_done, seen
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
