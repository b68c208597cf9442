//! The chart's Grafana dashboard queries only metrics that CloudKon exports:
//! every metric name in its PromQL is compared with the names in the
//! expositions of the registries the operator and `cloudkon-worker` serve on
//! `/metrics` (the same objects, built as their binaries build them). The
//! end-to-end test (`e2e.rs`, metrics) compares them with the real `/metrics`
//! pages of a running operator and worker too.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::aws::StatsSnapshot;
use cloudkon_operator::metrics::{BatchOutcome, Metrics, PoolLabels};
use cloudkon_worker::remote::WorkerStats;
use cloudkon_worker::serve::WorkerCollector;
use common::dashboard::{dashboard, dashboard_metrics, exposition_names, metric_names, queries};

fn aws_requests() -> StatsSnapshot {
    StatsSnapshot {
        requests: [("SQS.ReceiveMessage".to_string(), 3)].into(),
        write_units: 1.5,
        estimated_writes: 0,
    }
}

/// The operator's exposition, from the registry its binary serves, with a
/// sample in every labelled family (an empty family is not written at all).
fn operator_exposition() -> String {
    let metrics = Metrics::with_aws_requests(Some(Arc::new(aws_requests)));
    metrics.reconciled("taskbatch", Some("aws"), Duration::from_millis(3));
    let pool = PoolLabels {
        namespace: "team-a".into(),
        pool: "p".into(),
    };
    metrics.backlog.get_or_create(&pool).set(7);
    metrics.desired_workers.get_or_create(&pool).set(2);
    metrics.ready_workers.get_or_create(&pool).set(1);
    metrics.scale_changes.get_or_create(&pool).inc();
    metrics.tasks_enqueued.inc();
    for outcome in ["succeeded", "failed"] {
        metrics
            .tasks_collected
            .get_or_create(&BatchOutcome { outcome })
            .inc();
    }
    metrics.leader.set(1);
    metrics.encode()
}

/// A worker's exposition, from the collector its binary registers.
fn worker_exposition() -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(WorkerCollector {
        stats: Arc::new(WorkerStats::default()),
        slots: 4,
        requests: Some(Arc::new(aws_requests)),
    }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

#[test]
fn every_metric_the_dashboard_queries_is_one_the_operator_or_workers_export() {
    let operator = exposition_names(&operator_exposition());
    let worker = exposition_names(&worker_exposition());
    // The expositions were read: a few names each certainly exports.
    assert!(
        operator.contains("cloudkon_operator_pool_backlog"),
        "{operator:?}"
    );
    assert!(operator.contains("cloudkon_operator_reconcile_duration_seconds_bucket"));
    assert!(operator.contains("cloudkon_aws_requests_total"));
    assert!(worker.contains("cloudkon_worker_tasks_total"), "{worker:?}");

    let used = dashboard_metrics();
    let unknown: Vec<String> = used
        .iter()
        .filter(|(name, _)| !operator.contains(*name) && !worker.contains(*name))
        .map(|(name, panels)| format!("{name} (in {})", panels.join(", ")))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody exports: {unknown:?}
operator: {operator:?}
worker: {worker:?}"
    );

    // What the dashboard is for, by the metrics that show it.
    for (what, name) in [
        ("throughput", "cloudkon_worker_tasks_total"),
        ("throughput", "cloudkon_operator_tasks_collected_total"),
        ("backlog", "cloudkon_operator_pool_backlog"),
        ("workers desired", "cloudkon_operator_pool_desired_workers"),
        ("workers ready", "cloudkon_operator_pool_ready_workers"),
        ("failures", "cloudkon_operator_reconciles_total"),
        ("cost", "cloudkon_aws_requests_total"),
        ("cost", "cloudkon_aws_dynamodb_write_units_total"),
    ] {
        assert!(used.contains_key(name), "no panel shows {what} ({name})");
    }
}

#[test]
fn the_dashboard_is_one_grafana_loads() {
    let d = dashboard();
    assert_eq!(d["uid"], "cloudkon");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let queries = queries(&d);
    assert!(queries.len() >= 20, "{}", queries.len());
    // Each query selects something, and every panel has a unique id.
    for (title, query) in &queries {
        assert!(
            !metric_names(query).is_empty(),
            "{title}: {query} selects no metric"
        );
    }
    let mut ids: Vec<u64> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "panel ids are unique");
    // The data source is a variable, so that any Prometheus will do.
    let text = d.to_string();
    assert!(text.contains("${datasource}"));
}

fn names(q: &str) -> Vec<String> {
    metric_names(q).into_iter().collect()
}

#[test]
fn metric_names_skip_functions_labels_variables_and_keywords() {
    assert_eq!(
        names(
            r#"sum by (outcome) (rate(cloudkon_worker_tasks_total{namespace=~"$namespace", pool=~"a|b"}[$__rate_interval]))"#
        ),
        ["cloudkon_worker_tasks_total"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum by (le, controller) (rate(x_bucket[5m])))"),
        ["x_bucket"]
    );
    assert_eq!(
        names("a / on(pool) group_left(node) b offset 5m > bool 3 and c unless ignoring(x) d"),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        names(r#"sum(avg_over_time(m{x="y}"}[$__range])) * $__range_s / 3600 + ${var} + 1e3 + .5"#),
        ["m"]
    );
    assert_eq!(names("sum without (instance) (up) / count(up)"), ["up"]);
    assert_eq!(
        names(r#"label_values(m{namespace=~"$namespace"}, pool)"#),
        ["m"]
    );
    assert!(names("label_values(pool)").is_empty());
    assert_eq!(names("job:requests:rate5m > 0"), ["job:requests:rate5m"]);
}

#[test]
fn exposition_names_follow_the_types() {
    let text = "# HELP a_total x\n# TYPE a counter\na_total 1\n# TYPE h histogram\n\
                # TYPE g gauge\ng{x=\"1\"} 2\n# TYPE old_total counter\n";
    let names = exposition_names(text);
    for n in ["a_total", "h_bucket", "h_sum", "h_count", "g", "old_total"] {
        assert!(names.contains(n), "{n}: {names:?}");
    }
    assert!(!names.contains("a") && !names.contains("h"));
}
