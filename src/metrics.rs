//! Prometheus metrics of one [`crate::Application`], served on `GET /metrics` in the text
//! format 0.0.4. Each application has its own registry, so several bridges in one process
//! (as in the integration tests) count separately.

use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::BrokerKind;
use crate::event::EventType;
use crate::publisher::PublishError;

/// Content type of the text exposition format that [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram bucket bounds in seconds. Responses take from about 1 ms (a duplicate) to a few
/// seconds (a publish that waits for its timeout, 5 s by default), and a request that also
/// waits for another replica's claim can take longer.
const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

/// Values of the `reason` label of `webhook_bridge_publish_failures_total`.
const PUBLISH_FAILURE_REASONS: [&str; 6] = [
    "not_connected",
    "timeout",
    "nacked",
    "unroutable",
    "rejected",
    "broker_error",
];

/// A Redis command of the dedup protocol, the `operation` label of
/// `webhook_bridge_dedup_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupOperation {
    Claim,
    Release,
    MarkDone,
}

impl DedupOperation {
    const ALL: [Self; 3] = [Self::Claim, Self::Release, Self::MarkDone];

    fn as_str(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Release => "release",
            Self::MarkDone => "mark_done",
        }
    }
}

/// The metrics of one bridge, in their own registry.
pub struct Metrics {
    registry: Registry,
    broker: BrokerKind,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    requests_in_flight: IntGauge,
    events_published: IntCounterVec,
    publish_duration: Histogram,
    publish_failures: IntCounterVec,
    dead_letters: IntCounterVec,
    dedup_errors: IntCounterVec,
    broker_up: IntGauge,
    redis_up: IntGauge,
}

impl Metrics {
    /// Registers every metric for a bridge that publishes to `broker`. Series whose labels
    /// are known in advance start at 0, so that a rate over them exists before the first
    /// event.
    pub fn new(broker: BrokerKind) -> Self {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "webhook_bridge_requests_total",
            "Callback requests by result: outcome accepted, duplicate, rejected or unavailable, reason the error code of the response or none.",
            &["outcome", "reason"],
        );
        let request_duration = histogram_vec(
            &registry,
            "webhook_bridge_request_duration_seconds",
            "Time from receiving a callback request to its response, by outcome.",
            &["outcome"],
        );
        let requests_in_flight = register(
            &registry,
            IntGauge::new(
                "webhook_bridge_requests_in_flight",
                "Callback requests being handled.",
            ),
        );
        let events_published = counter_vec(
            &registry,
            "webhook_bridge_events_published_total",
            "Events that the broker confirmed, by broker and CloudEvents type.",
            &["broker", "event_type"],
        );
        let publish_duration = histogram_vec(
            &registry,
            "webhook_bridge_publish_duration_seconds",
            "Time from the start of a publish to the broker's confirmation or the failure.",
            &["broker"],
        );
        let publish_failures = counter_vec(
            &registry,
            "webhook_bridge_publish_failures_total",
            "Publishes that failed, by broker and reason.",
            &["broker", "reason"],
        );
        let dead_letters = counter_vec(
            &registry,
            "webhook_bridge_dead_letters_total",
            "Dead letters of rejected callbacks, by broker and result: published or failed.",
            &["broker", "result"],
        );
        let dedup_errors = counter_vec(
            &registry,
            "webhook_bridge_dedup_errors_total",
            "Redis commands of the dedup protocol that failed or timed out, by operation.",
            &["operation"],
        );
        let broker_up = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "webhook_bridge_broker_up",
                    "1 when the broker connection is up and confirming publishes, else 0. Checked at each scrape.",
                ),
                &["broker"],
            ),
        );
        let redis_up = register(
            &registry,
            IntGauge::new(
                "webhook_bridge_redis_up",
                "1 when Redis answered a PING at the last scrape, else 0.",
            ),
        );
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "webhook_bridge_build_info",
                    "Always 1; the version label is the version of the bridge.",
                ),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let metrics = Self {
            registry,
            broker,
            requests,
            request_duration,
            requests_in_flight,
            events_published,
            publish_duration: publish_duration.with_label_values(&[broker.as_str()]),
            publish_failures,
            dead_letters,
            dedup_errors,
            broker_up: broker_up.with_label_values(&[broker.as_str()]),
            redis_up,
        };
        metrics.create_known_series();
        metrics
    }

    /// Creates, at 0, the series whose label values are known before the first request.
    fn create_known_series(&self) {
        let broker = self.broker.as_str();
        for outcome in ["accepted", "duplicate"] {
            self.requests.with_label_values(&[outcome, "none"]);
        }
        for outcome in ["accepted", "duplicate", "rejected", "unavailable"] {
            self.request_duration.with_label_values(&[outcome]);
        }
        for event_type in [EventType::TaskCompleted, EventType::TaskFailed] {
            self.events_published
                .with_label_values(&[broker, event_type.as_str()]);
        }
        for reason in PUBLISH_FAILURE_REASONS {
            self.publish_failures.with_label_values(&[broker, reason]);
        }
        for result in ["published", "failed"] {
            self.dead_letters.with_label_values(&[broker, result]);
        }
        for operation in DedupOperation::ALL {
            self.dedup_errors.with_label_values(&[operation.as_str()]);
        }
    }

    /// Counts a callback request as in flight until the returned guard is finished or
    /// dropped. A request whose future is dropped (its client reset the connection) leaves
    /// the gauge but is not counted in `webhook_bridge_requests_total`.
    pub fn start_request(&self) -> RequestGuard<'_> {
        self.requests_in_flight.inc();
        RequestGuard {
            metrics: self,
            started: Instant::now(),
        }
    }

    /// Records a publish that the broker confirmed after `elapsed`.
    pub fn record_published(&self, event_type: EventType, elapsed: Duration) {
        self.publish_duration.observe(elapsed.as_secs_f64());
        self.events_published
            .with_label_values(&[self.broker.as_str(), event_type.as_str()])
            .inc();
    }

    /// Records a publish that failed with `error` after `elapsed`.
    pub fn record_publish_failure(&self, error: &PublishError, elapsed: Duration) {
        self.publish_duration.observe(elapsed.as_secs_f64());
        self.publish_failures
            .with_label_values(&[self.broker.as_str(), publish_failure_reason(error)])
            .inc();
    }

    /// Counts a dead letter that the broker confirmed (`published`) or that was lost.
    pub fn record_dead_letter(&self, published: bool) {
        let result = if published { "published" } else { "failed" };
        self.dead_letters
            .with_label_values(&[self.broker.as_str(), result])
            .inc();
    }

    /// Counts a failed Redis command of the dedup protocol.
    pub fn record_dedup_error(&self, operation: DedupOperation) {
        self.dedup_errors
            .with_label_values(&[operation.as_str()])
            .inc();
    }

    /// Sets `webhook_bridge_broker_up`.
    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.set(i64::from(up));
    }

    /// Sets `webhook_bridge_redis_up`.
    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    /// Writes every metric in the text exposition format 0.0.4.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut text = String::new();
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text)?;
        Ok(text)
    }
}

/// A callback request in flight. Dropping it without [`RequestGuard::finish`] only lowers
/// the in-flight gauge.
pub struct RequestGuard<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl RequestGuard<'_> {
    /// Counts the request with its `outcome` and `reason` labels and records its duration.
    pub fn finish(self, outcome: &'static str, reason: &'static str) {
        let metrics = self.metrics;
        metrics.requests.with_label_values(&[outcome, reason]).inc();
        metrics
            .request_duration
            .with_label_values(&[outcome])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.metrics.requests_in_flight.dec();
    }
}

/// Adds `metric` to `registry` and returns it. The names are fixed in this module, so a
/// failure is a programming error that the unit tests catch.
fn register<T>(registry: &Registry, metric: prometheus::Result<T>) -> T
where
    T: Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric name, help and labels");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let options = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    register(registry, HistogramVec::new(options, labels))
}

/// Returns the `reason` label of a publish failure.
pub(crate) fn publish_failure_reason(error: &PublishError) -> &'static str {
    match error {
        PublishError::NotConnected => "not_connected",
        PublishError::Timeout(_) => "timeout",
        PublishError::Nacked => "nacked",
        PublishError::Unroutable { .. } => "unroutable",
        PublishError::Rejected { .. } => "rejected",
        PublishError::Broker(_) => "broker_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the value of the sample line that starts with `series` followed by a space.
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn known_series_start_at_zero() {
        let text = Metrics::new(BrokerKind::Kafka).encode().unwrap();
        for series in [
            r#"webhook_bridge_requests_total{outcome="accepted",reason="none"}"#,
            r#"webhook_bridge_requests_total{outcome="duplicate",reason="none"}"#,
            r#"webhook_bridge_events_published_total{broker="kafka",event_type="task.completed"}"#,
            r#"webhook_bridge_events_published_total{broker="kafka",event_type="task.failed"}"#,
            r#"webhook_bridge_publish_failures_total{broker="kafka",reason="broker_error"}"#,
            r#"webhook_bridge_dedup_errors_total{operation="mark_done"}"#,
            r#"webhook_bridge_dead_letters_total{broker="kafka",result="published"}"#,
            r#"webhook_bridge_dead_letters_total{broker="kafka",result="failed"}"#,
            r#"webhook_bridge_request_duration_seconds_count{outcome="unavailable"}"#,
            r#"webhook_bridge_publish_duration_seconds_count{broker="kafka"}"#,
            "webhook_bridge_requests_in_flight",
        ] {
            assert_eq!(sample(&text, series).as_deref(), Some("0"), "{series}");
        }
        let version = format!(
            r#"webhook_bridge_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &version).as_deref(), Some("1"));
    }

    #[test]
    fn publish_failures_count_by_reason() {
        let metrics = Metrics::new(BrokerKind::Rabbitmq);
        let failures = [
            (PublishError::NotConnected, "not_connected"),
            (PublishError::Timeout(Duration::from_secs(5)), "timeout"),
            (PublishError::Nacked, "nacked"),
            (
                PublishError::Unroutable {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".to_owned(),
                },
                "unroutable",
            ),
            (
                PublishError::Rejected {
                    reason: "topic missing".to_owned(),
                    retriable: false,
                },
                "rejected",
            ),
            (PublishError::Broker("closed".to_owned()), "broker_error"),
        ];
        for (error, _) in &failures {
            metrics.record_publish_failure(error, Duration::from_millis(3));
        }

        let text = metrics.encode().unwrap();
        for (_, reason) in failures {
            let series = format!(
                r#"webhook_bridge_publish_failures_total{{broker="rabbitmq",reason="{reason}"}}"#
            );
            assert_eq!(sample(&text, &series).as_deref(), Some("1"), "{reason}");
        }
        let count = r#"webhook_bridge_publish_duration_seconds_count{broker="rabbitmq"}"#;
        assert_eq!(sample(&text, count).as_deref(), Some("6"));
        let bucket =
            r#"webhook_bridge_publish_duration_seconds_bucket{broker="rabbitmq",le="0.005"}"#;
        assert_eq!(sample(&text, bucket).as_deref(), Some("6"));
    }

    #[test]
    fn dropped_request_guard_leaves_in_flight() {
        let metrics = Metrics::new(BrokerKind::Rabbitmq);
        let finished = metrics.start_request();
        let dropped = metrics.start_request();
        assert_eq!(metrics.requests_in_flight.get(), 2);

        finished.finish("rejected", "invalid_json");
        drop(dropped);
        assert_eq!(metrics.requests_in_flight.get(), 0);

        let text = metrics.encode().unwrap();
        let rejected = r#"webhook_bridge_requests_total{outcome="rejected",reason="invalid_json"}"#;
        assert_eq!(sample(&text, rejected).as_deref(), Some("1"));
        let count = r#"webhook_bridge_request_duration_seconds_count{outcome="rejected"}"#;
        assert_eq!(sample(&text, count).as_deref(), Some("1"));
    }

    #[test]
    fn up_gauges_follow_the_last_check() {
        let metrics = Metrics::new(BrokerKind::Rabbitmq);
        metrics.set_broker_up(true);
        metrics.set_redis_up(false);
        let text = metrics.encode().unwrap();
        let broker = r#"webhook_bridge_broker_up{broker="rabbitmq"}"#;
        assert_eq!(sample(&text, broker).as_deref(), Some("1"));
        assert_eq!(
            sample(&text, "webhook_bridge_redis_up").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn registries_are_independent() {
        let first = Metrics::new(BrokerKind::Rabbitmq);
        let second = Metrics::new(BrokerKind::Rabbitmq);
        first.record_dedup_error(DedupOperation::Claim);
        let claim = r#"webhook_bridge_dedup_errors_total{operation="claim"}"#;
        assert_eq!(
            sample(&first.encode().unwrap(), claim).as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&second.encode().unwrap(), claim).as_deref(),
            Some("0")
        );
    }
}
