//! What a batch costs: AWS requests, DynamoDB write units and worker time,
//! and their price. Workers attach their share to the results they send; the
//! operator adds its own requests and prices the sum.

use serde::{Deserialize, Serialize};

/// Requests, write units and worker time. Fractional: a request shared by
/// several batches (a receive, a delete of many messages) is split between
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub sqs_requests: f64,
    pub dynamodb_requests: f64,
    pub dynamodb_write_units: f64,
    /// GetObject and HeadObject.
    pub s3_reads: f64,
    /// Every other S3 request (PutObject, List, ...), billed as writes.
    pub s3_writes: f64,
    /// Time of worker processes (not slots) spent for the batch.
    pub worker_seconds: f64,
}

/// List prices in US dollars (us-east-1, 2026): per million requests or
/// write units, and per worker-hour (what the pool declares; 0 when unknown).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    pub sqs_requests: f64,
    pub dynamodb_write_units: f64,
    pub s3_writes: f64,
    pub s3_reads: f64,
}

impl Prices {
    pub const LIST: Prices = Prices {
        sqs_requests: 0.40,
        dynamodb_write_units: 0.625,
        s3_writes: 5.0,
        s3_reads: 0.40,
    };
}

impl Default for Prices {
    fn default() -> Self {
        Self::LIST
    }
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.sqs_requests += other.sqs_requests;
        self.dynamodb_requests += other.dynamodb_requests;
        self.dynamodb_write_units += other.dynamodb_write_units;
        self.s3_reads += other.s3_reads;
        self.s3_writes += other.s3_writes;
        self.worker_seconds += other.worker_seconds;
    }

    pub fn scaled(&self, factor: f64) -> Usage {
        Usage {
            sqs_requests: self.sqs_requests * factor,
            dynamodb_requests: self.dynamodb_requests * factor,
            dynamodb_write_units: self.dynamodb_write_units * factor,
            s3_reads: self.s3_reads * factor,
            s3_writes: self.s3_writes * factor,
            worker_seconds: self.worker_seconds * factor,
        }
    }

    /// AWS requests of every service.
    pub fn requests(&self) -> f64 {
        self.sqs_requests + self.dynamodb_requests + self.s3_reads + self.s3_writes
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    /// The bill in US dollars, with workers at `worker_hour` dollars an hour.
    /// DynamoDB reads and S3 storage and transfer are left out: the task
    /// path reads no tables, and storage depends on how long results are kept.
    pub fn dollars(&self, prices: &Prices, worker_hour: f64) -> f64 {
        (self.sqs_requests * prices.sqs_requests
            + self.dynamodb_write_units * prices.dynamodb_write_units
            + self.s3_writes * prices.s3_writes
            + self.s3_reads * prices.s3_reads)
            / 1e6
            + self.worker_seconds / 3600.0 * worker_hour
    }

    /// Shares of `self` in proportion to `weights` (all zero: equal shares).
    /// The shares add up to `self`.
    pub fn split(&self, weights: &[f64]) -> Vec<Usage> {
        let total: f64 = weights.iter().filter(|w| w.is_finite() && **w > 0.0).sum();
        let n = weights.len() as f64;
        weights
            .iter()
            .map(|w| {
                let w = if w.is_finite() && *w > 0.0 { *w } else { 0.0 };
                self.scaled(if total > 0.0 { w / total } else { 1.0 / n })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Usage {
        Usage {
            sqs_requests: 10.0,
            dynamodb_requests: 4.0,
            dynamodb_write_units: 6.0,
            s3_reads: 1.0,
            s3_writes: 2.0,
            worker_seconds: 90.0,
        }
    }

    #[test]
    fn shares_add_up_to_the_whole() {
        let whole = usage();
        let shares = whole.split(&[3.0, 1.0, 0.0]);
        assert_eq!(shares[0].sqs_requests, 7.5);
        assert_eq!(shares[1].worker_seconds, 22.5);
        assert!(shares[2].is_zero());
        let mut sum = Usage::default();
        shares.iter().for_each(|s| sum.add(s));
        assert_eq!(sum, whole);
        // No weight anywhere: equal shares, still the whole.
        let equal = whole.split(&[0.0, 0.0]);
        assert_eq!(equal[0], equal[1]);
        assert_eq!(equal[0].requests() * 2.0, whole.requests());
    }

    #[test]
    fn dollars_follow_the_price_table_and_the_worker_hour() {
        let u = Usage {
            sqs_requests: 1e6,
            dynamodb_write_units: 2e6,
            s3_writes: 1e5,
            s3_reads: 1e6,
            dynamodb_requests: 2e6,
            worker_seconds: 7200.0,
        };
        let p = Prices::LIST;
        let expected = 0.40 + 2.0 * 0.625 + 0.1 * 5.0 + 0.40 + 2.0 * 0.10;
        assert!((u.dollars(&p, 0.10) - expected).abs() < 1e-9);
        assert!((u.dollars(&p, 0.0) - (expected - 0.2)).abs() < 1e-9);
    }
}
