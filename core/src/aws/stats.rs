//! Counting AWS requests by service and operation, and what they cost.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::usage::{Prices, Usage};

/// Requests per `"Service.Operation"` (e.g. `"SQS.SendMessageBatch"`), every
/// attempt counted (AWS bills retries too), and DynamoDB write capacity units.
/// Cheap to clone: clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct RequestStats {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: Mutex<BTreeMap<String, u64>>,
    /// Thousandths of a write unit (DynamoDB reports fractions for some writes).
    write_milli_units: AtomicU64,
    /// Writes whose units were computed from the item size, because the server
    /// did not report them.
    estimated_writes: AtomicU64,
    /// Counts everything counted here too (see [`RequestStats::child`]).
    parent: Option<RequestStats>,
}

impl RequestStats {
    /// Counters of their own that also count in `self`: one batch's requests
    /// among the operator's.
    pub fn child(&self) -> RequestStats {
        RequestStats {
            inner: Arc::new(Inner {
                parent: Some(self.clone()),
                ..Inner::default()
            }),
        }
    }

    pub fn record_request(&self, service: &str, operation: &str) {
        let key = format!("{service}.{operation}");
        {
            let mut requests = self.inner.requests.lock().expect("stats lock");
            *requests.entry(key).or_default() += 1;
        }
        if let Some(parent) = &self.inner.parent {
            parent.record_request(service, operation);
        }
    }

    /// Adds DynamoDB write capacity units; `estimated`: computed, not reported.
    pub fn record_write_units(&self, units: f64, estimated: bool) {
        let milli = (units * 1000.0).round().max(0.0) as u64;
        self.inner
            .write_milli_units
            .fetch_add(milli, Ordering::Relaxed);
        if estimated {
            self.inner.estimated_writes.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(parent) = &self.inner.parent {
            parent.record_write_units(units, estimated);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.inner.requests.lock().expect("stats lock").clone(),
            write_units: self.inner.write_milli_units.load(Ordering::Relaxed) as f64 / 1000.0,
            estimated_writes: self.inner.estimated_writes.load(Ordering::Relaxed),
        }
    }
}

/// The counters at one moment. Subtract two to measure a phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    pub requests: BTreeMap<String, u64>,
    pub write_units: f64,
    /// How many writes' units were computed from the item size (1 per started
    /// KiB) because the server did not report consumed capacity.
    pub estimated_writes: u64,
}

impl StatsSnapshot {
    /// Requests of one `"Service.Operation"`.
    pub fn get(&self, operation: &str) -> u64 {
        self.requests.get(operation).copied().unwrap_or(0)
    }

    /// Requests to one service (`"SQS"`, `"DynamoDB"`, `"S3"`).
    pub fn service_total(&self, service: &str) -> u64 {
        self.requests
            .iter()
            .filter(|(k, _)| k.split_once('.').is_some_and(|(s, _)| s == service))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        let requests = self
            .requests
            .iter()
            .map(|(k, n)| (k.clone(), n - earlier.get(k)))
            .filter(|(_, n)| *n > 0)
            .collect();
        StatsSnapshot {
            requests,
            write_units: self.write_units - earlier.write_units,
            estimated_writes: self.estimated_writes - earlier.estimated_writes,
        }
    }

    /// These requests and write units as a batch's [`Usage`] (no worker time).
    pub fn usage(&self) -> Usage {
        let s3_reads = self.get("S3.GetObject") + self.get("S3.HeadObject");
        Usage {
            sqs_requests: self.service_total("SQS") as f64,
            dynamodb_requests: self.service_total("DynamoDB") as f64,
            dynamodb_write_units: self.write_units,
            s3_reads: s3_reads as f64,
            s3_writes: (self.service_total("S3") - s3_reads) as f64,
            worker_seconds: 0.0,
        }
    }

    /// The bill for these requests, in US dollars (see [`Usage::dollars`]).
    pub fn cost_usd(&self, prices: &Prices) -> f64 {
        self.usage().dollars(prices, 0.0)
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, n) in &self.requests {
            writeln!(f, "{k}: {n}")?;
        }
        write!(f, "DynamoDB write units: {:.1}", self.write_units)?;
        if self.estimated_writes > 0 {
            write!(
                f,
                " ({} writes estimated from item size)",
                self.estimated_writes
            )?;
        }
        Ok(())
    }
}

/// The SDK interceptor that feeds [`RequestStats`]. It counts just before a
/// request goes on the wire, so every retry is counted, and presigning (which
/// sends nothing) is not.
#[derive(Debug)]
pub(crate) struct CountRequests(pub(crate) RequestStats);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CloudKonCountRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        match cfg.load::<Metadata>() {
            Some(m) => self.0.record_request(m.service(), m.name()),
            None => self.0.record_request("unknown", "unknown"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_subtract_and_price() {
        let stats = RequestStats::default();
        stats.record_request("SQS", "SendMessageBatch");
        let before = stats.snapshot();
        for _ in 0..3 {
            stats.record_request("SQS", "SendMessageBatch");
        }
        stats.record_request("SQS", "ReceiveMessage");
        stats.record_request("S3", "PutObject");
        stats.record_request("S3", "GetObject");
        stats.record_write_units(2.0, false);
        stats.record_write_units(0.5, true);
        let d = stats.snapshot().since(&before);
        assert_eq!(d.get("SQS.SendMessageBatch"), 3);
        assert_eq!(d.service_total("SQS"), 4);
        assert_eq!(d.total(), 6);
        assert_eq!(d.write_units, 2.5);
        assert_eq!(d.estimated_writes, 1);
        let u = d.usage();
        assert_eq!((u.sqs_requests, u.s3_reads, u.s3_writes), (4.0, 1.0, 1.0));
        assert_eq!(u.dynamodb_write_units, 2.5);
        let want = (4.0 * 0.40 + 2.5 * 0.625 + 5.0 + 0.40) / 1e6;
        assert!((d.cost_usd(&Prices::LIST) - want).abs() < 1e-12);
    }

    #[test]
    fn a_child_counts_its_own_and_in_its_parent() {
        let parent = RequestStats::default();
        let child = parent.child();
        parent.record_request("SQS", "ReceiveMessage");
        child.record_request("SQS", "SendMessageBatch");
        child.record_write_units(1.5, false);
        assert_eq!(child.snapshot().total(), 1);
        assert_eq!(parent.snapshot().total(), 2);
        assert_eq!(parent.snapshot().write_units, 1.5);
    }
}
