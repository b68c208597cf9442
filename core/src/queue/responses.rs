//! Response queues in memory: results sent to a `reply_to` wait there for the
//! side that counts them, with receipts, as SQS response queues keep them.
//! What is received and not deleted can be made visible again (`redeliver`),
//! as a visibility timeout would, to test that nothing is counted twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{QueueError, Receipt, ResultRouter, ResultsInbox};
use crate::wire::{self, ResultsMessage};

/// Every response queue of one process, by `reply_to`.
#[derive(Debug, Default)]
pub struct MemoryResponses {
    queues: Mutex<HashMap<String, Mailbox>>,
    arrived: tokio::sync::Notify,
    receipts: AtomicU64,
}

#[derive(Debug, Default)]
struct Mailbox {
    waiting: VecDeque<String>,
    /// Received and not deleted, by receipt.
    in_flight: BTreeMap<u64, String>,
}

impl MemoryResponses {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The receiving end of the queue `reply_to`.
    pub fn inbox(self: &Arc<Self>, reply_to: &str) -> MemoryInbox {
        MemoryInbox {
            responses: self.clone(),
            reply_to: reply_to.to_string(),
        }
    }

    /// Messages of `reply_to` received and not deleted become visible again.
    pub fn redeliver(&self, reply_to: &str) {
        let mut queues = self.queues.lock().expect("responses lock");
        let mailbox = queues.entry(reply_to.to_string()).or_default();
        let back = std::mem::take(&mut mailbox.in_flight);
        mailbox.waiting.extend(back.into_values());
        drop(queues);
        self.arrived.notify_waiters();
    }

    /// Messages of `reply_to` not received yet.
    pub fn waiting(&self, reply_to: &str) -> usize {
        let queues = self.queues.lock().expect("responses lock");
        queues.get(reply_to).map_or(0, |m| m.waiting.len())
    }

    /// Messages waiting or in flight in `reply_to`.
    pub fn len(&self, reply_to: &str) -> usize {
        let queues = self.queues.lock().expect("responses lock");
        queues
            .get(reply_to)
            .map_or(0, |m| m.waiting.len() + m.in_flight.len())
    }

    fn take(&self, reply_to: &str, max: usize) -> Vec<(u64, String)> {
        let mut queues = self.queues.lock().expect("responses lock");
        let mailbox = queues.entry(reply_to.to_string()).or_default();
        let n = max.min(mailbox.waiting.len());
        let taken: Vec<(u64, String)> = mailbox
            .waiting
            .drain(..n)
            .map(|body| (self.receipts.fetch_add(1, Ordering::Relaxed), body))
            .collect();
        for (receipt, body) in &taken {
            mailbox.in_flight.insert(*receipt, body.clone());
        }
        taken
    }
}

impl ResultRouter for MemoryResponses {
    async fn send_results(&self, reply_to: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        self.queues
            .lock()
            .expect("responses lock")
            .entry(reply_to.to_string())
            .or_default()
            .waiting
            .extend(bodies);
        self.arrived.notify_waiters();
        Ok(())
    }
}

/// One response queue's receiving end (see [`MemoryResponses::inbox`]).
#[derive(Clone, Debug)]
pub struct MemoryInbox {
    responses: Arc<MemoryResponses>,
    reply_to: String,
}

impl ResultsInbox for MemoryInbox {
    async fn receive_results(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(ResultsMessage, Receipt)>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so that a send in between wakes us.
            let arrived = self.responses.arrived.notified();
            let taken = self.responses.take(&self.reply_to, max);
            if !taken.is_empty() {
                return taken
                    .into_iter()
                    .map(|(receipt, body)| {
                        let message = wire::decode_results(&body)
                            .map_err(|e| QueueError::Backend(e.to_string()))?;
                        Ok((message, Receipt(receipt.to_string())))
                    })
                    .collect();
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack_results(&self, receipts: Vec<Receipt>) -> Result<(), QueueError> {
        let mut queues = self.responses.queues.lock().expect("responses lock");
        let mailbox = queues.entry(self.reply_to.clone()).or_default();
        for Receipt(r) in receipts {
            let r: u64 = r
                .parse()
                .map_err(|_| QueueError::Backend(format!("not a receipt of this queue: {r}")))?;
            mailbox.in_flight.remove(&r);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{BatchId, Outcome, TaskResult, Timestamp};

    fn message(id: u64) -> String {
        let m = ResultsMessage {
            key: format!("k{id}"),
            ideal: Duration::ZERO,
            results: vec![TaskResult {
                batch: BatchId::new("b"),
                id,
                attempt: 1,
                outcome: Outcome::Succeeded,
                exit_code: None,
                stdout: String::new(),
                stderr: String::new(),
                truncated: false,
                artifact: None,
                artifact_url: None,
                worker: "w".into(),
                submitted: Timestamp(0),
                started: Timestamp(0),
                finished: Timestamp(0),
            }],
            usage: Default::default(),
        };
        wire::encode_results(&m, usize::MAX).unwrap()
    }

    #[tokio::test]
    async fn results_wait_for_their_reader_and_come_back_until_deleted() {
        let responses = MemoryResponses::new();
        let inbox = responses.inbox("r");
        let empty = inbox.receive_results(10, Duration::from_millis(10)).await;
        assert!(empty.unwrap().is_empty());
        // A send wakes a waiting receive.
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.receive_results(10, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        responses
            .send_results("r", vec![message(1), message(2)])
            .await
            .unwrap();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(responses.len("r"), 2);
        // Not deleted: back after a redelivery; deleted: gone.
        inbox.ack_results(vec![got[0].1.clone()]).await.unwrap();
        responses.redeliver("r");
        let again = inbox.receive_results(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.results[0].id, 2);
        inbox.ack_results(vec![again[0].1.clone()]).await.unwrap();
        assert_eq!(responses.len("r"), 0);
        assert_eq!(responses.len("other"), 0);
    }
}
