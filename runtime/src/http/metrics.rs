//! `GET /metrics`: Prometheus text exposition (OpenMetrics) of requests, latencies per
//! pipeline and per stage (histograms, so quantiles aggregate across replicas), validation
//! failures by rule, drift scores and status, quality metrics and status per version, alerts,
//! and requests in flight.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use super::AppState;
use super::connections::ConnectionMetrics;
use crate::experiment::State as ExperimentState;
use crate::pipeline::Trace;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    pipeline: String,
    version: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    pipeline: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    pipeline: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColumnLabels {
    pipeline: String,
    column: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    pipeline: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabels {
    pipeline: String,
    version: String,
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabels {
    pipeline: String,
    arm: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    pipeline: String,
    output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    pipeline: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pipeline: String,
    state: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 25 µs to about 13 s: Weir's stages take microseconds, a client's
/// patience is seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(25e-6, 2.0, 20))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<PipelineLabels>,
    stage_seconds: Histograms<StageLabels>,
    batch_size: Histograms<PipelineLabels>,
    validation_failures: Family<RuleLabels, Counter>,
    drift_score: Family<ColumnLabels, Gauge<f64, AtomicU64>>,
    drift_status: Family<ColumnLabels, Gauge>,
    quality_score: Family<MetricLabels, Gauge<f64, AtomicU64>>,
    quality_status: Family<VersionLabels, Gauge>,
    quality_records_dropped: Counter,
    quality_records_evicted: Counter,
    alerts_raised: Counter,
    alerts_delivered: Counter,
    alerts_failed: Counter,
    experiment_requests: Family<ArmLabels, Counter>,
    experiment_agreement: Family<OutputLabels, Gauge<f64, AtomicU64>>,
    shadow_dropped: Family<ReasonLabels, Counter>,
    experiment_state: Family<StateLabels, Gauge>,
    in_flight: Gauge,
    instances: Gauge,
    instance_capacity: Gauge,
    payload_dropped: Counter,
    /// Open and refused connections, updated by the accept loop.
    pub connections: ConnectionMetrics,
    /// Per pipeline, the handles its serving version's successful requests update.
    answered: RwLock<HashMap<String, Arc<Answered>>>,
}

/// The metrics one pipeline version's successful requests update, looked up once: a request
/// then records without building label strings or looking up seven label sets (that was about
/// 3% of the server's throughput on iris at c=64).
struct Answered {
    version: String,
    requests: Counter,
    seconds: Histogram,
    /// Per stage, in the order its requests pass them.
    stages: Vec<(&'static str, Histogram)>,
}

impl Answered {
    /// Whether these handles are the ones a request of `version` through `stages` updates.
    fn fits(&self, version: &str, stages: &[(&'static str, std::time::Duration)]) -> bool {
        self.version == version
            && self.stages.len() == stages.len()
            && self.stages.iter().zip(stages).all(|(a, b)| a.0 == b.0)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weir");
        let requests = Family::default();
        registry.register(
            "requests",
            "Inference requests by pipeline, version and HTTP status",
            requests.clone(),
        );
        let request_seconds: Histograms<PipelineLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Inference latency, decode to encode",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let stage_seconds: Histograms<StageLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "stage_duration",
            "Time in each stage: validate, queue (a batching pipeline's wait for its batch), \
             the Wasm stages (making a fresh instance included), observe",
            Unit::Seconds,
            stage_seconds.clone(),
        );
        let batch_size: Histograms<PipelineLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 10)));
        registry.register(
            "batch_size",
            "Requests served by each batch of a batching pipeline",
            batch_size.clone(),
        );
        let validation_failures = Family::default();
        registry.register(
            "validation_failures",
            "Inputs refused by the validate stage, by rule",
            validation_failures.clone(),
        );
        let drift_score = Family::default();
        registry.register(
            "drift_score",
            "Distance of the live window from the reference, per column and method",
            drift_score.clone(),
        );
        let drift_status = Family::default();
        registry.register(
            "drift_status",
            "Drift status per column: 0 ok, 1 warn, 2 alert",
            drift_status.clone(),
        );
        let quality_score = Family::default();
        registry.register(
            "quality_score",
            "Live model quality per version against truth sent as feedback, per metric",
            quality_score.clone(),
        );
        let quality_status = Family::default();
        registry.register(
            "quality_status",
            "Quality status per version: -1 insufficient truth, 0 ok, 1 warn, 2 alert",
            quality_status.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let quality_records_dropped = counter(
            &mut registry,
            "quality_records_dropped",
            "Prediction records dropped because their writer fell behind",
        );
        let quality_records_evicted = counter(
            &mut registry,
            "quality_records_evicted",
            "Prediction records evicted by --quality-record-rows or --quality-record-seconds",
        );
        let alerts_raised = counter(
            &mut registry,
            "alerts_raised",
            "Drift and quality status changes alerted",
        );
        let alerts_delivered = counter(
            &mut registry,
            "alerts_delivered",
            "Alerts the webhook (--alert-webhook) accepted",
        );
        let alerts_failed = counter(
            &mut registry,
            "alerts_failed",
            "Alerts not delivered to the webhook after every retry, or dropped from its full queue",
        );
        let experiment_requests = Family::default();
        registry.register(
            "experiment_requests",
            "Requests of a pipeline with a live experiment, by the arm that answered and status",
            experiment_requests.clone(),
        );
        let experiment_agreement = Family::default();
        registry.register(
            "experiment_agreement",
            "Share of compared elements or rows on which a shadow candidate's output agrees",
            experiment_agreement.clone(),
        );
        let shadow_dropped = Family::default();
        registry.register(
            "shadow_dropped",
            "Shadow copies not run: the queue was full, or requests were waiting for a turn",
            shadow_dropped.clone(),
        );
        let experiment_state = Family::default();
        registry.register(
            "experiment_state",
            "1 for the state each pipeline's experiment is in (running, paused, promoted, aborted)",
            experiment_state.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Inference requests running or waiting for a turn",
            in_flight.clone(),
        );
        let instances = Gauge::default();
        registry.register(
            "instances_active",
            "Stage instances alive now, each holding an instance-pool slot",
            instances.clone(),
        );
        let instance_capacity = Gauge::default();
        registry.register(
            "instances_capacity",
            "Slots in the instance pool",
            instance_capacity.clone(),
        );
        let payload_dropped = Counter::default();
        registry.register(
            "payload_log_dropped",
            "Payload log records dropped because the writer fell behind",
            payload_dropped.clone(),
        );
        let connections = ConnectionMetrics::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed at the connection limit (--max-connections)",
            connections.refused.clone(),
        );
        Metrics {
            registry,
            connections,
            requests,
            request_seconds,
            stage_seconds,
            batch_size,
            validation_failures,
            drift_score,
            drift_status,
            quality_score,
            quality_status,
            quality_records_dropped,
            quality_records_evicted,
            alerts_raised,
            alerts_delivered,
            alerts_failed,
            experiment_requests,
            experiment_agreement,
            shadow_dropped,
            experiment_state,
            in_flight,
            instances,
            instance_capacity,
            payload_dropped,
            answered: RwLock::default(),
        }
    }
}

impl Metrics {
    /// Count a request of a pipeline with a live experiment, by the arm that answered.
    pub fn record_experiment(&self, pipeline: &str, arm: &str, code: u16) {
        let labels = ArmLabels {
            pipeline: pipeline.to_owned(),
            arm: arm.to_owned(),
            code,
        };
        self.experiment_requests.get_or_create(&labels).inc();
    }

    /// Record one answered inference request.
    pub fn record(&self, pipeline: &str, version: &str, code: u16, seconds: f64, trace: &Trace) {
        if code != 200 {
            return self.record_labelled(pipeline, version, code, seconds, trace);
        }
        let answered = self.answered(pipeline, version, trace);
        answered.requests.inc();
        answered.seconds.observe(seconds);
        for ((_, histogram), (_, duration)) in answered.stages.iter().zip(&trace.stages) {
            histogram.observe(duration.as_secs_f64());
        }
        if let Some(size) = trace.batch_size {
            (self.batch_size.get_or_create(&pipeline_labels(pipeline))).observe(size as f64);
        }
    }

    /// The handles for a successful request like `trace`, resolved on the first such request
    /// (and again after a swap to another version).
    fn answered(&self, pipeline: &str, version: &str, trace: &Trace) -> Arc<Answered> {
        let known = self.answered.read().unwrap().get(pipeline).cloned();
        if let Some(answered) = known.filter(|a| a.fits(version, &trace.stages)) {
            return answered;
        }
        let answered = Arc::new(Answered {
            version: version.to_owned(),
            requests: self
                .requests
                .get_or_create(&request_labels(pipeline, version, 200))
                .clone(),
            seconds: self
                .request_seconds
                .get_or_create(&pipeline_labels(pipeline))
                .clone(),
            stages: trace
                .stages
                .iter()
                .map(|&(stage, _)| {
                    (
                        stage,
                        self.stage_seconds
                            .get_or_create(&stage_labels(pipeline, stage))
                            .clone(),
                    )
                })
                .collect(),
        });
        self.answered
            .write()
            .unwrap()
            .insert(pipeline.to_owned(), answered.clone());
        answered
    }

    /// Record a request through the label families: for errors, which are rare.
    fn record_labelled(
        &self,
        pipeline: &str,
        version: &str,
        code: u16,
        seconds: f64,
        trace: &Trace,
    ) {
        self.requests
            .get_or_create(&request_labels(pipeline, version, code))
            .inc();
        self.request_seconds
            .get_or_create(&pipeline_labels(pipeline))
            .observe(seconds);
        for &(stage, duration) in &trace.stages {
            self.stage_seconds
                .get_or_create(&stage_labels(pipeline, stage))
                .observe(duration.as_secs_f64());
        }
        for rule in &trace.violated_rules {
            self.validation_failures
                .get_or_create(&RuleLabels {
                    pipeline: pipeline.to_owned(),
                    rule: (*rule).to_owned(),
                })
                .inc();
        }
    }
}

fn request_labels(pipeline: &str, version: &str, code: u16) -> RequestLabels {
    RequestLabels {
        pipeline: pipeline.to_owned(),
        version: version.to_owned(),
        code,
    }
}

fn pipeline_labels(pipeline: &str) -> PipelineLabels {
    PipelineLabels {
        pipeline: pipeline.to_owned(),
    }
}

fn stage_labels(pipeline: &str, stage: &str) -> StageLabels {
    StageLabels {
        pipeline: pipeline.to_owned(),
        stage: stage.to_owned(),
    }
}

/// The exposition, with the gauges read at scrape time.
pub async fn scrape(State(app): State<AppState>) -> impl IntoResponse {
    let metrics = &app.metrics;
    metrics.in_flight.set(app.admission.in_flight() as i64);
    metrics
        .instances
        .set(crate::engine::live_instances() as i64);
    metrics
        .instance_capacity
        .set(i64::from(crate::engine::POOL_INSTANCES));
    if let Some(log) = &app.payload_log {
        catch_up(&metrics.payload_dropped, log.dropped());
    }
    let quality = app.registry.quality();
    let (dropped, evicted) = quality.record_counts();
    catch_up(&metrics.quality_records_dropped, dropped);
    catch_up(&metrics.quality_records_evicted, evicted);
    let alerts = quality.alerts().counts();
    catch_up(&metrics.alerts_raised, alerts.raised.load(Relaxed));
    catch_up(&metrics.alerts_delivered, alerts.delivered.load(Relaxed));
    catch_up(&metrics.alerts_failed, alerts.failed.load(Relaxed));
    for experiment in app.registry.experiments().all() {
        let pipeline = &experiment.pipeline;
        for (output, share) in experiment.agreement() {
            let labels = OutputLabels {
                pipeline: pipeline.clone(),
                output,
            };
            metrics
                .experiment_agreement
                .get_or_create(&labels)
                .set(share);
        }
        for (reason, dropped) in experiment.dropped() {
            let labels = ReasonLabels {
                pipeline: pipeline.clone(),
                reason: reason.to_owned(),
            };
            catch_up(&metrics.shadow_dropped.get_or_create(&labels), dropped);
        }
        let current = experiment.state();
        for state in ExperimentState::ALL {
            let labels = StateLabels {
                pipeline: pipeline.clone(),
                state: state.name().to_owned(),
            };
            (metrics.experiment_state.get_or_create(&labels)).set(i64::from(state == current));
        }
    }
    for (pipeline, report) in quality.reports() {
        let version = report.version.to_string();
        for (metric, value) in &report.metrics {
            let labels = MetricLabels {
                pipeline: pipeline.clone(),
                version: version.clone(),
                metric: (*metric).to_owned(),
            };
            metrics.quality_score.get_or_create(&labels).set(*value);
        }
        let labels = VersionLabels { pipeline, version };
        (metrics.quality_status.get_or_create(&labels)).set(report.status.gauge());
    }
    for report in app.registry.drift_reports() {
        for column in &report.columns {
            let labels = ColumnLabels {
                pipeline: report.pipeline.clone(),
                column: column.column.clone(),
                method: column.method.to_owned(),
            };
            metrics
                .drift_score
                .get_or_create(&labels)
                .set(column.score.unwrap_or(f64::NAN));
            metrics
                .drift_status
                .get_or_create(&labels)
                .set(column.status as i64);
        }
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &metrics.registry).is_err() {
        text.clear();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Bring `counter` up to `total`, a count kept elsewhere.
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn trace(stages: &[&'static str]) -> Trace {
        Trace {
            stages: stages
                .iter()
                .map(|&s| (s, Duration::from_micros(5)))
                .collect(),
            ..Trace::default()
        }
    }

    fn exposition(metrics: &Metrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        text
    }

    #[test]
    fn every_request_counts_under_its_own_version_code_and_stages() {
        let metrics = Metrics::default();
        let full = trace(&["validate", "model", "observe"]);
        for _ in 0..3 {
            metrics.record("p", "1", 200, 0.001, &full);
        }
        // A swap: the next answers come from version 2, one of them past fewer stages.
        metrics.record("p", "2", 200, 0.001, &full);
        metrics.record("p", "2", 200, 0.001, &trace(&["validate", "model"]));
        metrics.record("p", "2", 400, 0.001, &trace(&["validate"]));
        // A late answer of version 1, after the swap.
        metrics.record("p", "1", 200, 0.001, &full);
        metrics.record("q", "1", 200, 0.001, &full);
        let text = exposition(&metrics);
        for line in [
            r#"weir_requests_total{pipeline="p",version="1",code="200"} 4"#,
            r#"weir_requests_total{pipeline="p",version="2",code="200"} 2"#,
            r#"weir_requests_total{pipeline="p",version="2",code="400"} 1"#,
            r#"weir_requests_total{pipeline="q",version="1",code="200"} 1"#,
            r#"weir_request_duration_seconds_count{pipeline="p"} 7"#,
            r#"weir_stage_duration_seconds_count{pipeline="p",stage="validate"} 7"#,
            r#"weir_stage_duration_seconds_count{pipeline="p",stage="model"} 6"#,
            r#"weir_stage_duration_seconds_count{pipeline="p",stage="observe"} 5"#,
            r#"weir_stage_duration_seconds_count{pipeline="q",stage="observe"} 1"#,
        ] {
            assert!(text.contains(line), "lacks {line}:\n{text}");
        }
    }
}
