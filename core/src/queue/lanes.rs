//! A pool's two lanes, as a worker receives them: the priority lane first,
//! then the main queue. The main queue holds the pool's window of work in
//! arrival order, so a batch applied beside a big one would wait behind
//! that window (~20 s of the pool's work) for each of its first bundles;
//! its runner sends those to the priority lane instead (see the operator's
//! `shares::priority_lane`), which every worker looks at before it takes
//! from the main queue.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Delivery, QueueError, Receipt, TaskQueue};
use crate::bundle::Bundle;

/// A priority lane that is not there (a pool made by an older operator, or
/// deleted by hand) is looked for again after this.
const LANE_MISSING_RETRY: Duration = Duration::from_secs(60);

/// The main queue and, where the pool has one, its priority lane.
pub struct Lanes<Q> {
    main: Q,
    priority: Option<Q>,
    state: Mutex<LaneState>,
}

/// Starts the receipts of the deliveries that came from the priority lane:
/// acks, extensions and releases go to the lane they came from, with the
/// lane's own receipt. Not in SQS's receipt handles (base64). In the receipt
/// rather than in a set of receipts kept here, which kept those of bundles
/// hidden after a failed claim and taken by another worker for good.
const LANE_RECEIPT: &str = "!pri!";

#[derive(Default)]
struct LaneState {
    /// The priority lane was missing: not asked again before this.
    missing_until: Option<Instant>,
    /// That was said once in the log.
    missing_told: bool,
}

impl<Q: TaskQueue> Lanes<Q> {
    pub fn new(main: Q, priority: Option<Q>) -> Self {
        Self {
            main,
            priority,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().expect("lanes lock")
    }

    fn priority_now(&self) -> Option<&Q> {
        let priority = self.priority.as_ref()?;
        let mut state = self.lock();
        match state.missing_until {
            Some(until) if Instant::now() < until => None,
            Some(_) => {
                state.missing_until = None;
                Some(priority)
            }
            None => Some(priority),
        }
    }

    /// Splits receipts by the lane they came from (priority, main), each
    /// as its lane gave it.
    fn split(receipts: Vec<Receipt>) -> (Vec<Receipt>, Vec<Receipt>) {
        let mut priority = Vec::new();
        let mut main = Vec::new();
        for r in receipts {
            match lane_receipt(&r) {
                Some(lane) => priority.push(lane),
                None => main.push(r),
            }
        }
        (priority, main)
    }

    /// The lane a receipt came from, and the receipt as that lane gave it.
    fn lane_of(&self, receipt: &Receipt) -> (&Q, Receipt) {
        match (&self.priority, lane_receipt(receipt)) {
            (Some(p), Some(lane)) => (p, lane),
            _ => (&self.main, receipt.clone()),
        }
    }
}

/// A receipt of the priority lane, as the lane gave it; `None`: the main
/// queue's.
fn lane_receipt(receipt: &Receipt) -> Option<Receipt> {
    receipt
        .0
        .strip_prefix(LANE_RECEIPT)
        .map(|r| Receipt(r.to_string()))
}

impl<Q: TaskQueue> TaskQueue for Lanes<Q> {
    /// Into the main queue: the operator's runner picks the lane itself.
    async fn send(&self, bundles: Vec<Bundle>) -> Result<(), QueueError> {
        self.main.send(bundles).await
    }

    /// The priority lane without waiting, then the main queue as asked. A
    /// lane that fails is passed over: the main queue still serves.
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Vec<Delivery>>, QueueError> {
        let got = self.receive_priority(max).await?;
        if !got.is_empty() {
            return Ok(Some(got));
        }
        self.main.receive(max, wait).await
    }

    async fn receive_main(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Vec<Delivery>>, QueueError> {
        self.main.receive(max, wait).await
    }

    /// The lane without waiting; a lane missing or failing gives nothing
    /// (`Ok`): a missing one is not asked again for [`LANE_MISSING_RETRY`].
    async fn receive_priority(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let Some(priority) = self.priority_now() else {
            return Ok(Vec::new());
        };
        match priority.receive(max, Duration::ZERO).await {
            Ok(Some(mut got)) => {
                for d in &mut got {
                    d.priority = true;
                    if let Some(r) = &mut d.receipt {
                        r.0.insert_str(0, LANE_RECEIPT);
                    }
                }
                Ok(got)
            }
            Ok(None) => Ok(Vec::new()),
            Err(QueueError::NotFound(e)) => {
                let mut state = self.lock();
                if !std::mem::replace(&mut state.missing_told, true) {
                    tracing::info!(error = %e, retry_in = ?LANE_MISSING_RETRY, "the queue has no priority lane: receiving from the queue only");
                }
                state.missing_until = Some(Instant::now() + LANE_MISSING_RETRY);
                Ok(Vec::new())
            }
            Err(e) => {
                tracing::debug!(error = %e, "the priority lane failed: receiving from the queue");
                Ok(Vec::new())
            }
        }
    }

    async fn ack(&self, receipts: Vec<Receipt>) -> Result<(), QueueError> {
        let (priority, main) = Self::split(receipts);
        let mut first = None;
        if !priority.is_empty()
            && let Some(p) = &self.priority
            && let Err(e) = p.ack(priority).await
        {
            first = Some(e);
        }
        if !main.is_empty()
            && let Err(e) = self.main.ack(main).await
        {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    async fn extend(&self, receipt: &Receipt, timeout: Duration) -> Result<(), QueueError> {
        let (lane, receipt) = self.lane_of(receipt);
        lane.extend(&receipt, timeout).await
    }

    async fn extend_all(
        &self,
        receipts: Vec<Receipt>,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let (priority, main) = Self::split(receipts);
        let mut first = None;
        if !priority.is_empty()
            && let Some(p) = &self.priority
            && let Err(e) = p.extend_all(priority, timeout).await
        {
            first = Some(e);
        }
        if !main.is_empty()
            && let Err(e) = self.main.extend_all(main, timeout).await
        {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    async fn release(&self, receipt: &Receipt) -> Result<(), QueueError> {
        let (lane, receipt) = self.lane_of(receipt);
        lane.release(&receipt).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_names_its_lane_and_goes_back_as_that_lane_gave_it() {
        let from_lane = |r: &str| Receipt(format!("{LANE_RECEIPT}{r}"));
        let (priority, main) = Lanes::<crate::queue::MemoryQueue>::split(vec![
            Receipt("AQEBm1".into()),
            from_lane("AQEBp1"),
            Receipt("AQEBm2".into()),
            from_lane("AQEBp2"),
        ]);
        assert_eq!(
            priority,
            [Receipt("AQEBp1".into()), Receipt("AQEBp2".into())]
        );
        assert_eq!(main, [Receipt("AQEBm1".into()), Receipt("AQEBm2".into())]);
        assert_eq!(lane_receipt(&Receipt("AQEBm1".into())), None);
    }
}
