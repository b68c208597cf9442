//! `/metrics` (Prometheus text format) and `/healthz` on one port.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cloudkon_core::aws::StatsSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::remote::WorkerStats;

/// The AWS request counters, read on each scrape.
pub type RequestCounts = Arc<dyn Fn() -> StatsSnapshot + Send + Sync>;

/// The worker's metrics, read from its counters on each scrape.
pub struct WorkerCollector {
    pub stats: Arc<WorkerStats>,
    pub slots: usize,
    /// AWS requests by `SERVICE.Operation`, counted by the program itself.
    pub requests: Option<RequestCounts>,
}

impl std::fmt::Debug for WorkerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCollector")
            .field("slots", &self.slots)
            .finish()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: &AtomicU64,
) -> std::fmt::Result {
    let c = ConstCounter::new(WorkerStats::get(value));
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for WorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.stats;
        let e = &mut encoder;
        counter(
            e,
            "cloudkon_worker_bundles",
            "Bundles claimed and run.",
            &s.bundles,
        )?;
        let tasks = ConstCounter::new(0u64);
        let mut family = e.encode_descriptor(
            "cloudkon_worker_tasks",
            "Tasks finished, by outcome.",
            None,
            tasks.metric_type(),
        )?;
        for (outcome, value) in [
            ("succeeded", &s.tasks_succeeded),
            ("failed", &s.tasks_failed),
        ] {
            ConstCounter::new(WorkerStats::get(value))
                .encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        counter(
            e,
            "cloudkon_worker_duplicates",
            "Deliveries skipped: the bundle was held or done elsewhere.",
            &s.duplicates,
        )?;
        counter(
            e,
            "cloudkon_worker_cancelled_bundles",
            "Bundles of cancelled batches deleted without running.",
            &s.cancelled,
        )?;
        counter(
            e,
            "cloudkon_worker_results_resent",
            "Stored results sent again.",
            &s.resent,
        )?;
        counter(
            e,
            "cloudkon_worker_taken_over",
            "Bundles taken over from a worker whose lease expired.",
            &s.taken_over,
        )?;
        counter(
            e,
            "cloudkon_worker_leases_lost",
            "Bundles whose lease ran out here and another worker took over (renewals too slow or failing).",
            &s.leases_lost,
        )?;
        counter(
            e,
            "cloudkon_worker_released",
            "Bundles given back unfinished (shutdown, scale-down), with their progress.",
            &s.released,
        )?;
        counter(
            e,
            "cloudkon_worker_lane_mark_bundles",
            "Bundles taken from the priority lane on a lane mark, with every slot taken.",
            &s.lane_marked,
        )?;
        counter(
            e,
            "cloudkon_worker_given_up",
            "Bundles reported failed after too many claims.",
            &s.given_up,
        )?;
        counter(
            e,
            "cloudkon_worker_tasks_skipped",
            "Tasks of taken-over bundles not run again: their earlier holder had reported them.",
            &s.tasks_skipped,
        )?;
        counter(
            e,
            "cloudkon_worker_results_dropped",
            "Results dropped because their response queue was deleted (its batch is gone).",
            &s.results_dropped,
        )?;
        counter(
            e,
            "cloudkon_worker_backend_errors",
            "Failed queue or ledger calls (retried).",
            &s.backend_errors,
        )?;
        let held = ConstGauge::new(WorkerStats::get(&s.held) as i64);
        held.encode(e.encode_descriptor(
            "cloudkon_worker_bundles_held",
            "Bundles held now (running or prefetched).",
            None,
            held.metric_type(),
        )?)?;
        let charged = s.charged();
        let requests = ConstCounter::new(charged.requests());
        requests.encode(e.encode_descriptor(
            "cloudkon_worker_charged_aws_requests",
            "AWS requests charged to batches: the shares the results sent carried (see cloudkon_aws_requests for all).",
            None,
            requests.metric_type(),
        )?)?;
        let seconds = ConstCounter::new(charged.worker_seconds);
        seconds.encode(e.encode_descriptor(
            "cloudkon_worker_charged_seconds",
            "This worker's time charged to batches with the results it sent.",
            None,
            seconds.metric_type(),
        )?)?;
        let slots = ConstGauge::new(self.slots as i64);
        slots.encode(e.encode_descriptor(
            "cloudkon_worker_slots",
            "Concurrent task slots.",
            None,
            slots.metric_type(),
        )?)?;
        if let Some(requests) = &self.requests {
            encode_aws_requests(e, &requests())?;
        }
        Ok(())
    }
}

/// The AWS request counters of a program (the operator's too), read on each
/// scrape: `cloudkon_aws_requests_total{operation}` and write units.
pub struct AwsRequestsCollector(pub RequestCounts);

impl std::fmt::Debug for AwsRequestsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsRequestsCollector")
    }
}

impl Collector for AwsRequestsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        encode_aws_requests(&mut encoder, &(self.0)())
    }
}

fn encode_aws_requests(
    e: &mut DescriptorEncoder<'_>,
    snapshot: &StatsSnapshot,
) -> std::fmt::Result {
    let kind = ConstCounter::new(0u64);
    let mut family = e.encode_descriptor(
        "cloudkon_aws_requests",
        "AWS requests sent, retries included, by SERVICE.Operation.",
        None,
        kind.metric_type(),
    )?;
    for (operation, value) in &snapshot.requests {
        ConstCounter::new(*value)
            .encode(family.encode_family(&[("operation", operation.as_str())])?)?;
    }
    let units = ConstCounter::new(snapshot.write_units);
    units.encode(e.encode_descriptor(
        "cloudkon_aws_dynamodb_write_units",
        "DynamoDB write capacity units consumed (estimated from item sizes where the server does not report them).",
        None,
        units.metric_type(),
    )?)
}

struct Served {
    registry: Registry,
    healthy: CancellationToken,
}

/// Serves until `done` fires. `/healthz` answers 200 until `unhealthy` fires.
/// Takes a bound listener so that a taken port is an error at start-up.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    unhealthy: CancellationToken,
    done: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    let state = Arc::new(Served {
        registry,
        healthy: unhealthy,
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { done.cancelled().await })
        .await
}

async fn metrics(State(state): State<Arc<Served>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        ),
    }
}

async fn healthz(State(state): State<Arc<Served>>) -> impl IntoResponse {
    if state.healthy.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_and_request_counts() {
        let stats = Arc::new(WorkerStats::default());
        WorkerStats::add(&stats.tasks_succeeded, 5);
        WorkerStats::add(&stats.duplicates, 2);
        WorkerStats::add(&stats.leases_lost, 3);
        stats.charged.lock().unwrap().add(&cloudkon_core::Usage {
            sqs_requests: 3.5,
            s3_writes: 1.0,
            worker_seconds: 12.25,
            ..Default::default()
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(WorkerCollector {
            stats,
            slots: 4,
            requests: Some(Arc::new(|| StatsSnapshot {
                requests: [("SQS.ReceiveMessage".to_string(), 7)].into(),
                write_units: 2.5,
                estimated_writes: 0,
            })),
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "cloudkon_worker_tasks_total{outcome=\"succeeded\"} 5",
            "cloudkon_worker_duplicates_total 2",
            "cloudkon_worker_leases_lost_total 3",
            "cloudkon_worker_slots 4",
            "cloudkon_worker_charged_aws_requests_total 4.5",
            "cloudkon_worker_charged_seconds_total 12.25",
            "cloudkon_aws_requests_total{operation=\"SQS.ReceiveMessage\"} 7",
            "cloudkon_aws_dynamodb_write_units_total 2.5",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[tokio::test]
    async fn healthz_turns_unavailable_when_stopping() {
        let unhealthy = CancellationToken::new();
        let done = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            Registry::default(),
            unhealthy.clone(),
            done.clone(),
        ));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for _ in 0..200 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    s.write_all(
                        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .await
                    .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.unwrap();
                    return out;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("server never listened");
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        unhealthy.cancel();
        assert!(get("/healthz").await.starts_with("HTTP/1.1 503"));
        assert!(get("/metrics").await.starts_with("HTTP/1.1 200"));
        done.cancel();
        server.await.unwrap().unwrap();
    }
}
