//! The operator's Prometheus metrics and the `/metrics` + `/healthz` server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cloudkon_worker::serve::{AwsRequestsCollector, RequestCounts};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `taskbatch` or `workerpool`.
    pub controller: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `taskbatch` or `workerpool`.
    pub controller: &'static str,
    /// What failed: `kube`, `aws`, `build`, `cleanup` or `other`
    /// (`error::Error::category`).
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchOutcome {
    /// `succeeded` or `failed`.
    pub outcome: &'static str,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Family<ControllerLabel, Histogram>,
    pub backlog: Family<PoolLabels, Gauge>,
    pub desired_workers: Family<PoolLabels, Gauge>,
    pub ready_workers: Family<PoolLabels, Gauge>,
    pub scale_changes: Family<PoolLabels, Counter>,
    pub tasks_enqueued: Counter,
    pub tasks_collected: Family<BatchOutcome, Counter>,
    pub leader: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_aws_requests(None)
    }

    /// The operator's metrics, and the AWS requests it sends when given
    /// their counters (`cloudkon_aws_requests_total`, as workers export them).
    pub fn with_aws_requests(requests: Option<RequestCounts>) -> Self {
        let mut root = Registry::default();
        if let Some(requests) = requests {
            root.register_collector(Box::new(AwsRequestsCollector(requests)));
        }
        let registry = root.sub_registry_with_prefix("cloudkon_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations, by controller and result.",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations, by controller and what failed (each is retried after 1 s, 2 s, 4 s... up to 5 minutes).",
            reconcile_errors.clone(),
        );
        let reconcile_seconds = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took.",
            reconcile_seconds.clone(),
        );
        let backlog = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_backlog",
            "Messages in a pool's queue, visible and in flight.",
            backlog.clone(),
        );
        let desired_workers = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_desired_workers",
            "Workers the scaler wants for a pool.",
            desired_workers.clone(),
        );
        let ready_workers = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_ready_workers",
            "Ready workers of a pool.",
            ready_workers.clone(),
        );
        let scale_changes = Family::<PoolLabels, Counter>::default();
        registry.register(
            "pool_scale_changes",
            "Changes of a pool's worker count.",
            scale_changes.clone(),
        );
        let tasks_enqueued = Counter::default();
        registry.register(
            "tasks_enqueued",
            "Tasks put in worker queues.",
            tasks_enqueued.clone(),
        );
        let tasks_collected = Family::<BatchOutcome, Counter>::default();
        registry.register(
            "tasks_collected",
            "Task results collected, by outcome.",
            tasks_collected.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this operator holds the leader Lease (or runs without election).",
            leader.clone(),
        );
        Metrics {
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            backlog,
            desired_workers,
            ready_workers,
            scale_changes,
            tasks_enqueued,
            tasks_collected,
            leader,
            registry: root,
        }
    }

    /// `error`: the failure's category, if it failed.
    pub fn reconciled(
        &self,
        controller: &'static str,
        error: Option<&'static str>,
        took: Duration,
    ) {
        let result = if error.is_none() { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        if let Some(category) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller,
                    category,
                })
                .inc();
        }
        self.reconcile_seconds
            .get_or_create(&ControllerLabel { controller })
            .observe(took.as_secs_f64());
    }

    /// A deleted pool's series go: dashboards would show its last workers
    /// and backlog until the operator restarts.
    pub fn forget_pool(&self, pool: &PoolLabels) {
        self.backlog.remove(pool);
        self.desired_workers.remove(pool);
        self.ready_workers.remove(pool);
        self.scale_changes.remove(pool);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Whether the operator is healthy: set false when a controller stopped.
#[derive(Clone, Debug)]
pub struct Health(Arc<AtomicBool>);

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new(AtomicBool::new(true)))
    }
}

impl Health {
    pub fn set(&self, healthy: bool) {
        self.0.store(healthy, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

type ServerState = (Arc<Metrics>, Health);

/// Serves `/metrics` and `/healthz` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, health: Health) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .with_state((metrics, health));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

async fn metrics_page(State((metrics, _)): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn healthz(State((_, health)): State<ServerState>) -> impl IntoResponse {
    if health.get() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a controller stopped\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_are_counted_by_what_failed() {
        let m = Metrics::new();
        m.reconciled("taskbatch", None, Duration::from_millis(1));
        m.reconciled("workerpool", Some("aws"), Duration::from_millis(1));
        m.reconciled("workerpool", Some("aws"), Duration::from_millis(1));
        let text = m.encode();
        for line in [
            "cloudkon_operator_reconciles_total{controller=\"taskbatch\",result=\"ok\"} 1",
            "cloudkon_operator_reconciles_total{controller=\"workerpool\",result=\"error\"} 2",
            "cloudkon_operator_reconcile_errors_total{controller=\"workerpool\",category=\"aws\"} 2",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("category=\"kube\""));
    }

    #[test]
    fn a_forgotten_pool_leaves_no_series() {
        let m = Metrics::new();
        let label = |pool: &str| PoolLabels {
            namespace: "ns".into(),
            pool: pool.into(),
        };
        for pool in ["gone", "kept"] {
            m.backlog.get_or_create(&label(pool)).set(3);
            m.desired_workers.get_or_create(&label(pool)).set(2);
            m.ready_workers.get_or_create(&label(pool)).set(1);
            m.scale_changes.get_or_create(&label(pool)).inc();
        }
        m.forget_pool(&label("gone"));
        let text = m.encode();
        assert!(!text.contains("pool=\"gone\""), "{text}");
        assert_eq!(text.matches("pool=\"kept\"").count(), 4, "{text}");
    }
}
