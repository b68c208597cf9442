//! A batch's `status.cost`: its usage priced, and projected to completion.

use cloudkon_core::{Prices, Usage};

use crate::crd::taskbatch::BatchCost;

/// The status of a batch that used `usage` (`of_workers` of it by workers)
/// with `finished` of its `total` tasks done.
pub fn batch_cost(
    usage: &Usage,
    of_workers: &Usage,
    prices: &Prices,
    worker_hour: Option<f64>,
    finished: u64,
    total: Option<u64>,
) -> BatchCost {
    let dollars = usage.dollars(prices, worker_hour.unwrap_or(0.0));
    // The cost per task so far, for the tasks left: requests and worker time
    // both follow the tasks run, more closely than the time elapsed.
    let projected = match total {
        Some(total) if finished >= total => Some(dollars),
        Some(total) if finished > 0 => Some(dollars * total as f64 / finished as f64),
        _ => None,
    };
    let summary = match projected {
        Some(p) if finished < total.unwrap_or(0) => {
            format!("{} / {}", money(dollars), money(p))
        }
        _ => money(dollars),
    };
    BatchCost {
        sqs_requests: round(usage.sqs_requests),
        dynamodb_requests: round(usage.dynamodb_requests),
        dynamodb_write_units: round(usage.dynamodb_write_units),
        s3_reads: round(usage.s3_reads),
        s3_writes: round(usage.s3_writes),
        worker_requests: round(of_workers.requests()),
        worker_seconds: round(usage.worker_seconds),
        dollars: significant(dollars),
        projected_dollars: projected.map(significant),
        summary,
    }
}

/// An ended batch's cost (finished, given up by its failure policy,
/// cancelled): what it spent, with nothing projected to a completion it will
/// not reach; its projection is its dollars, as a completed batch's is.
pub fn ended(cost: BatchCost) -> BatchCost {
    BatchCost {
        projected_dollars: Some(cost.dollars),
        summary: money(cost.dollars),
        ..cost
    }
}

/// Shares of shared requests are fractions: two decimals are plenty.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Four significant digits: a batch of small tasks costs fractions of a cent.
fn significant(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 0.0;
    }
    let scale = 10f64.powi(3 - x.log10().floor() as i32);
    (x * scale).round() / scale
}

/// `$12.34`, `$0.0123`, `$0.000045`: cents once past a dollar, else three
/// significant digits.
fn money(x: f64) -> String {
    if x >= 1.0 {
        format!("${x:.2}")
    } else if x <= 0.0 {
        "$0".to_string()
    } else {
        let decimals = (2 - x.log10().floor() as i32).max(2) as usize;
        format!("${x:.decimals$}")
    }
}

/// Half an hour of a $0.10-an-hour worker with a tenth of the batch done:
/// $0.05 spent, $0.50 projected (`$0.0500 / $0.500`).
#[cfg(test)]
pub fn a_tenth_done() -> BatchCost {
    batch_cost(
        &Usage {
            worker_seconds: 1_800.0,
            ..Usage::default()
        },
        &Usage::default(),
        &Prices::LIST,
        Some(0.10),
        1,
        Some(10),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Usage {
        Usage {
            sqs_requests: 2_000.0,
            dynamodb_requests: 1_000.0,
            dynamodb_write_units: 1_500.0,
            s3_reads: 0.0,
            s3_writes: 10.0,
            worker_seconds: 3_600.0,
        }
    }

    #[test]
    fn priced_with_the_table_and_the_pools_hour_and_projected_per_task() {
        let of_workers = Usage {
            sqs_requests: 1_500.0,
            dynamodb_requests: 1_000.0,
            ..Usage::default()
        };
        let c = batch_cost(
            &usage(),
            &of_workers,
            &Prices::LIST,
            Some(0.10),
            250,
            Some(1000),
        );
        let requests = (2_000.0 * 0.40 + 1_500.0 * 0.625 + 10.0 * 5.0) / 1e6;
        assert!(
            (c.dollars - (requests + 0.10)).abs() < 1e-3 * c.dollars,
            "{c:?}"
        );
        assert!((c.projected_dollars.unwrap() - 4.0 * c.dollars).abs() < 1e-3);
        assert_eq!(c.worker_requests, 2_500.0);
        assert_eq!(c.summary, "$0.102 / $0.407");
        // Without a worker price, the worker time is shown but not priced.
        let c = batch_cost(&usage(), &of_workers, &Prices::LIST, None, 1000, Some(1000));
        assert_eq!(c.worker_seconds, 3_600.0);
        assert!((c.dollars - requests).abs() < 1e-3 * requests, "{c:?}");
        assert_eq!(c.projected_dollars, Some(c.dollars));
        assert_eq!(c.summary, "$0.00179");
        // Nothing finished or the total unknown: no projection.
        let c = batch_cost(&usage(), &of_workers, &Prices::LIST, None, 0, Some(10));
        assert_eq!(c.projected_dollars, None);
        let c = batch_cost(&usage(), &of_workers, &Prices::LIST, None, 5, None);
        assert_eq!(c.projected_dollars, None);
    }

    #[test]
    fn an_ended_batch_costs_what_it_spent() {
        // Given up (or cancelled) at 100 of 1,000 tasks.
        let c = batch_cost(
            &usage(),
            &Usage::default(),
            &Prices::LIST,
            Some(0.10),
            100,
            Some(1000),
        );
        assert_eq!(c.summary, "$0.102 / $1.02");
        let c = ended(c);
        assert_eq!(c.summary, "$0.102");
        assert_eq!(c.projected_dollars, Some(c.dollars));
        // Ended before anything finished: no projection to drop.
        let c = batch_cost(&usage(), &Usage::default(), &Prices::LIST, None, 0, None);
        assert_eq!(ended(c.clone()).summary, c.summary);
    }

    #[test]
    fn money_reads_at_every_scale() {
        assert_eq!(money(0.0), "$0");
        assert_eq!(money(0.000045), "$0.0000450");
        assert_eq!(money(0.0123), "$0.0123");
        assert_eq!(money(0.5), "$0.500");
        assert_eq!(money(12.345), "$12.35");
        assert_eq!(money(1234.5), "$1234.50");
        assert_eq!(significant(0.00123456), 0.001235);
    }
}
