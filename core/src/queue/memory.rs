//! The in-process queue of the embedded engine.

use std::time::Duration;

use super::{Delivery, QueueError, Receipt, TaskQueue};
use crate::bundle::Bundle;

/// A bounded in-memory queue. Bounded so that a producer streaming millions of
/// tasks waits for the workers instead of holding the whole workload in memory.
#[derive(Clone, Debug)]
pub struct MemoryQueue {
    tx: async_channel::Sender<Bundle>,
    rx: async_channel::Receiver<Bundle>,
}

impl MemoryQueue {
    /// A queue holding at most `capacity` bundles.
    pub fn bounded(capacity: usize) -> Self {
        let (tx, rx) = async_channel::bounded(capacity.max(1));
        Self { tx, rx }
    }

    /// Enqueues from a plain thread, waiting while the queue is full.
    pub fn send_blocking(&self, bundle: Bundle) -> Result<(), QueueError> {
        self.tx
            .send_blocking(bundle)
            .map_err(|_| QueueError::Closed)
    }

    /// No more bundles will be sent: receivers drain what is left, then see the end.
    pub fn close(&self) {
        self.tx.close();
    }

    /// Bundles waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    fn delivery(bundle: Bundle) -> Delivery {
        Delivery {
            bundle,
            receipt: None,
            receive_count: 1,
            priority: false,
        }
    }
}

impl TaskQueue for MemoryQueue {
    async fn send(&self, bundles: Vec<Bundle>) -> Result<(), QueueError> {
        for bundle in bundles {
            self.tx.send(bundle).await.map_err(|_| QueueError::Closed)?;
        }
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Vec<Delivery>>, QueueError> {
        let first = match tokio::time::timeout(wait, self.rx.recv()).await {
            Err(_elapsed) => return Ok(Some(Vec::new())),
            Ok(Err(_closed_and_empty)) => return Ok(None),
            Ok(Ok(bundle)) => bundle,
        };
        let mut out = Vec::with_capacity(max.clamp(1, 16));
        out.push(Self::delivery(first));
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(bundle) => out.push(Self::delivery(bundle)),
                Err(_) => break,
            }
        }
        Ok(Some(out))
    }

    async fn ack(&self, _receipts: Vec<Receipt>) -> Result<(), QueueError> {
        // A delivered in-memory bundle is gone from the queue already.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Timestamp;

    fn bundle(n: usize) -> Bundle {
        Bundle {
            submitted: Timestamp::now(),
            tasks: Vec::with_capacity(n),
            reply_to: None,
            options: Default::default(),
        }
    }

    #[tokio::test]
    async fn receives_up_to_max_then_ends_after_close() {
        let q = MemoryQueue::bounded(8);
        q.send(vec![bundle(1), bundle(2), bundle(3)]).await.unwrap();
        q.close();
        let got = q.receive(2, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(got.len(), 2);
        let got = q.receive(2, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            q.receive(2, Duration::from_secs(5))
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            q.send(vec![bundle(1)]).await,
            Err(QueueError::Closed)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn empty_open_queue_returns_nothing_after_the_wait() {
        let q = MemoryQueue::bounded(1);
        let got = q
            .receive(10, Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert!(got.is_empty());
    }
}
