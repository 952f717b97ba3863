//! Kafka publisher: one idempotent producer (`acks=all`) shared by all requests. Each
//! publish waits for its delivery report. A background task checks broker reachability and
//! the two topics for readiness, creates missing topics when configured to, and rebuilds
//! the producer after a fatal error.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{debug, error, info, warn};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use super::{PublishError, Publisher};
use crate::config::{KafkaSettings, redact_secrets};
use crate::dead_letter::{DEAD_LETTER_TYPE, DeadLetter};
use crate::event::{CLOUDEVENTS_CONTENT_TYPE, Event};
use crate::log_throttle::LogThrottle;

/// Maximum startup delay spent on the first check of brokers and topics. HTTP is not
/// served until it ends.
const FIRST_CHECK_WAIT: Duration = Duration::from_secs(2);

/// How many publish timeouts long a timed-out publish keeps the broker not ready.
const STALL_WINDOW_FACTOR: u64 = 2;

/// Delay before the first rebuild of a producer after a fatal error. It doubles with each
/// rebuild that follows within [`STABLE_PRODUCER_AGE`], up to [`MAX_REBUILD_DELAY`], so that a
/// broker that fails every new producer at once does not cause a rebuild storm.
const MIN_REBUILD_DELAY: Duration = Duration::from_millis(200);
const MAX_REBUILD_DELAY: Duration = Duration::from_secs(30);

/// A producer that lived this long without a fatal error resets the rebuild delay.
const STABLE_PRODUCER_AGE: Duration = Duration::from_secs(60);

/// Number of publishes in a row, failed in a way that points at the producer, after which the
/// producer is replaced. Such a failure is a producer state error (such as a fenced or
/// unknown producer id), or a timeout while the last check reached the brokers and both
/// topics. librdkafka does not treat all of these as fatal: after a broker lost the producer's
/// state, for example, it can bump the epoch in a loop and time out every message.
const WEDGED_AFTER_ERRORS: u32 = 3;

/// Interval between two log lines for one librdkafka error code. librdkafka repeats errors,
/// such as every failed reconnect during an outage, so the repeats in between are counted.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

type KafkaProducer = FutureProducer<BridgeContext>;

/// Receives librdkafka's global errors. Each one wakes the supervisor, which rebuilds the
/// producer when the error was fatal: a fatal error leaves it unable to send anything more.
/// Brokers reported down make the bridge not ready until the next check reaches them.
struct BridgeContext {
    signals: Arc<ClientSignals>,
    /// At most one line per error code and interval. rust-rdkafka 0.38 also passes each
    /// error event to the callback twice (once from `Client::poll_event`, once from
    /// `BaseProducer::poll`).
    error_log: LogThrottle<String>,
    /// Values of secret `kafka.options`, which librdkafka may quote in its messages.
    secrets: Vec<String>,
}

/// State that librdkafka's error callback shares with the supervisor and `/readyz`.
#[derive(Default)]
struct ClientSignals {
    /// Set when librdkafka reports every broker down, until a check reaches the brokers.
    brokers_down: AtomicBool,
    /// Number of such reports, so that a check only clears the flag when none arrived
    /// while it ran.
    down_reports: AtomicU64,
    /// Wakes the supervisor after an error report.
    error_reported: Notify,
    /// Publishes in a row that failed in a way that points at the producer.
    suspect_failures: AtomicU32,
    /// Set once the producer should be replaced although librdkafka raised no fatal error.
    replacement_requested: AtomicBool,
}

impl ClientContext for BridgeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.signals.brokers_down.store(true, Ordering::SeqCst);
            self.signals.down_reports.fetch_add(1, Ordering::SeqCst);
        }
        self.signals.error_reported.notify_one();

        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
        let Some(left_out) = self.error_log.admit(code) else {
            return;
        };
        let cause = redact_secrets(&format!("{error}: {reason}"), &self.secrets);
        warn!(cause:% = cause, repeats_not_logged = left_out; "Kafka client error.");
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let message = redact_secrets(message, &self.secrets);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Warning => {
                warn!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Debug => {
                debug!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
        }
    }
}

/// Result of the last check of brokers and topics, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    Unknown,
    Unreachable(String),
    /// Topics that the brokers do not know. Publishes to them fail at once.
    MissingTopics(Vec<String>),
    /// Topics that exist but report an error, such as a leader election in progress, as
    /// `topic: error`. Publishes to them go ahead, since librdkafka waits for the partition.
    TopicErrors(Vec<String>),
    Ready,
}

struct Shared {
    settings: KafkaSettings,
    publish_timeout: Duration,
    /// The effective `message.timeout.ms`.
    delivery_timeout: Duration,
    producer: RwLock<Arc<KafkaProducer>>,
    /// The signals of the current producer.
    signals: RwLock<Arc<ClientSignals>>,
    health: Mutex<Health>,
    /// Until when (milliseconds since `started`) the broker counts as not ready because a
    /// publish timed out; 0 when none did. The next delivery clears it.
    stalled_until_ms: AtomicU64,
    started: Instant,
    checked: watch::Sender<bool>,
}

impl Shared {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn producer(&self) -> Arc<KafkaProducer> {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn signals(&self) -> Arc<ClientSignals> {
        self.signals
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn is_ready(&self) -> bool {
        *self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            == Health::Ready
    }

    /// Returns whether the last check found `topic` missing.
    fn is_missing(&self, topic: &str) -> bool {
        let health = self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        matches!(&*health, Health::MissingTopics(missing) if missing.iter().any(|name| name == topic))
    }

    /// Stores the result of a check, and logs it when it differs from the previous one.
    fn set_health(&self, health: Health) {
        let mut current = self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *current == health {
            return;
        }
        let brokers = &self.settings.brokers;
        match &health {
            Health::Ready => info!(
                brokers:% = brokers,
                topics:% = format_args!(
                    "{},{}",
                    self.settings.topic_completed,
                    self.settings.topic_failed
                );
                "Kafka is reachable and both topics exist."
            ),
            Health::Unreachable(cause) => warn!(
                brokers:% = brokers, cause:% = cause;
                "Kafka brokers are not reachable; answering 503 until they are."
            ),
            Health::MissingTopics(topics) => error!(
                brokers:% = brokers, topics = topics.join(",");
                "Kafka topics do not exist; their events get 503 until the topics are created (or kafka.create_topics is set)."
            ),
            Health::TopicErrors(errors) => warn!(
                brokers:% = brokers, errors = errors.join(",");
                "Kafka topics report errors; the bridge is not ready until they clear."
            ),
            Health::Unknown => {}
        }
        *current = health;
    }

    /// Tracks stalls for readiness.
    fn record_outcome(&self, timed_out: bool) {
        let stalled_until = if timed_out {
            let window = self.publish_timeout.as_millis() as u64 * STALL_WINDOW_FACTOR;
            self.elapsed_ms() + window
        } else {
            0
        };
        self.stalled_until_ms.store(stalled_until, Ordering::SeqCst);
    }
}

/// Publishes events to Kafka and waits for each delivery report.
pub struct KafkaPublisher {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl KafkaPublisher {
    /// Creates the producer, starts the supervisor and waits briefly for the first check of
    /// the brokers and topics. The bridge starts even when Kafka is down, and requests get
    /// 503 until it is reachable.
    pub async fn start(
        settings: KafkaSettings,
        publish_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let (producer, signals) = build_producer(&settings, publish_timeout)?;
        let delivery_timeout = settings.effective_delivery_timeout(publish_timeout);
        let (checked, mut first_check) = watch::channel(false);
        let shared = Arc::new(Shared {
            settings,
            publish_timeout,
            delivery_timeout,
            producer: RwLock::new(Arc::new(producer)),
            signals: RwLock::new(signals),
            health: Mutex::new(Health::Unknown),
            stalled_until_ms: AtomicU64::new(0),
            started: Instant::now(),
            checked,
        });
        let supervisor = tokio::spawn(supervise(shared.clone()));

        let wait = Duration::from_millis(shared.settings.metadata_timeout_ms).min(FIRST_CHECK_WAIT);
        if timeout(wait, first_check.wait_for(|done| *done))
            .await
            .is_err()
        {
            warn!(
                brokers:% = shared.settings.brokers;
                "Kafka did not answer the startup check within {wait:?}; answering 503 until it does."
            );
        }
        Ok(Self {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
        })
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let shared = &self.shared;
        let topic = shared.settings.topic(event.event_type);
        // librdkafka would hold the message until its timeout. If the topic appeared
        // meanwhile, it would deliver the message after the provider got its 503.
        if shared.is_missing(topic) {
            return Err(PublishError::Rejected {
                reason: format!("topic {topic} does not exist"),
                retriable: false,
            });
        }
        let producer = shared.producer();
        let signals = shared.signals();
        let record = FutureRecord::to(topic)
            .key(event.task_id.as_str())
            .payload(&event.payload)
            .headers(message_headers(event))
            .timestamp(event.unix_time_millis());
        // librdkafka gives its verdict within `message.timeout.ms` of queueing the message.
        // The wait for room in its local queue comes on top, so it gets a tenth of the budget.
        let queue_wait = shared.publish_timeout / 10;
        let delivered = timeout(shared.publish_timeout, producer.send(record, queue_wait)).await;

        let (result, state_error) = match delivered {
            Err(_) => (Err(PublishError::Timeout(shared.publish_timeout)), None),
            Ok(Ok(_)) => (Ok(()), None),
            Ok(Err((cause, _message))) => {
                let state_error = cause
                    .rdkafka_error_code()
                    .filter(|code| is_producer_state_error(*code));
                (Err(classify(&cause, shared.delivery_timeout)), state_error)
            }
        };
        let timed_out = matches!(result, Err(PublishError::Timeout(_)));
        shared.record_outcome(timed_out);

        let suspect = state_error.is_some() || (timed_out && shared.is_ready());
        if result.is_ok() {
            signals.suspect_failures.store(0, Ordering::SeqCst);
        } else if suspect {
            let count = signals.suspect_failures.fetch_add(1, Ordering::SeqCst) + 1;
            if count >= WEDGED_AFTER_ERRORS
                && !signals.replacement_requested.swap(true, Ordering::SeqCst)
            {
                let cause = state_error.map_or_else(
                    || "timeouts while the brokers reply".to_owned(),
                    |code| code.to_string(),
                );
                warn!(
                    cause:% = cause;
                    "Kafka producer failed {count} publishes in a row; building a new producer."
                );
                signals.error_reported.notify_one();
            }
        }
        result
    }

    async fn publish_dead_letter(&self, dead_letter: &DeadLetter) -> Result<(), PublishError> {
        let shared = &self.shared;
        let time = dead_letter.rfc3339_time();
        let mut attributes = vec![
            ("ce_specversion", "1.0"),
            ("ce_id", dead_letter.id.as_str()),
            ("ce_type", DEAD_LETTER_TYPE),
            ("ce_source", dead_letter.source.as_str()),
            ("ce_time", time.as_str()),
            ("content-type", CLOUDEVENTS_CONTENT_TYPE),
        ];
        if let Some(task_id) = &dead_letter.task_id {
            attributes.push(("ce_subject", task_id.as_str()));
        }
        let mut record = FutureRecord::to(&shared.settings.topic_invalid)
            .payload(&dead_letter.payload)
            .headers(headers_of(&attributes))
            .timestamp(dead_letter.unix_time_millis());
        if let Some(task_id) = &dead_letter.task_id {
            record = record.key(task_id.as_str());
        }
        // Unlike an event's, this outcome leaves the stall and producer-failure tracking
        // alone, because a missing dead-letter topic must not make the bridge unready.
        let queue_wait = shared.publish_timeout / 10;
        let producer = shared.producer();
        match timeout(shared.publish_timeout, producer.send(record, queue_wait)).await {
            Err(_) => Err(PublishError::Timeout(shared.publish_timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err((cause, _message))) => Err(classify(&cause, shared.delivery_timeout)),
        }
    }

    fn is_connected(&self) -> bool {
        let shared = &self.shared;
        let stalled = shared.stalled_until_ms.load(Ordering::SeqCst) > shared.elapsed_ms();
        let signals = shared.signals();
        let broken = shared.producer().client().fatal_error().is_some()
            || signals.replacement_requested.load(Ordering::SeqCst);
        let brokers_down = signals.brokers_down.load(Ordering::SeqCst);
        shared.is_ready() && !stalled && !broken && !brokers_down
    }

    async fn shutdown(&self, limit: Duration) {
        // The supervisor holds no state worth finishing: a check or a rebuild in progress
        // is dropped, and its blocking metadata request ends within its own limit.
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(supervisor) = supervisor {
            supervisor.abort();
            let _ = supervisor.await;
        }

        let producer = self.shared.producer();
        let flushed = tokio::task::spawn_blocking(move || {
            let flushed = producer.flush(Timeout::After(limit));
            (flushed, producer.in_flight_count())
        })
        .await;
        match flushed {
            Ok((Ok(()), _)) => info!("Kafka producer flushed; nothing is left undelivered."),
            Ok((Err(cause), undelivered)) => error!(
                undelivered = undelivered, cause:% = cause;
                "Kafka producer did not deliver every message within {limit:?}."
            ),
            Err(cause) => error!(cause:% = cause; "Flushing the Kafka producer failed."),
        }
    }
}

/// Builds the headers of an event's Kafka message: the CloudEvents attributes as `ce_*`
/// headers and the content type of the document, so consumers can route without parsing.
pub fn message_headers(event: &Event) -> OwnedHeaders {
    let time = event.rfc3339_time();
    let headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", event.id.as_str()),
        ("ce_type", event.event_type.as_str()),
        ("ce_source", event.source.as_str()),
        ("ce_subject", event.task_id.as_str()),
        ("ce_time", time.as_str()),
        ("content-type", CLOUDEVENTS_CONTENT_TYPE),
    ];
    headers_of(&headers)
}

fn headers_of(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(
        OwnedHeaders::new_with_capacity(pairs.len()),
        |all, (key, value)| {
            all.insert(Header {
                key,
                value: Some(*value),
            })
        },
    )
}

/// Maps a failed delivery to a publish error, telling retriable causes from those that
/// need an operator. `delivery_timeout` is the effective `message.timeout.ms`.
fn classify(cause: &KafkaError, delivery_timeout: Duration) -> PublishError {
    let Some(code) = cause.rdkafka_error_code() else {
        return PublishError::Broker(cause.to_string());
    };
    if code == RDKafkaErrorCode::MessageTimedOut {
        return PublishError::Timeout(delivery_timeout);
    }
    PublishError::Rejected {
        reason: format!("{code:?}: {code}"),
        retriable: !is_permanent(code),
    }
}

/// Errors that mean the broker rejects the idempotent producer's id or epoch, or that the
/// two disagree on its sequence numbers.
fn is_producer_state_error(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        ProducerFenced
            | Fenced
            | InvalidProducerEpoch
            | UnknownProducerId
            | InvalidProducerIdMapping
            | OutOfOrderSequenceNumber
    )
}

/// Errors that repeat until the configuration, the topics or the broker's settings change.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        UnknownTopic
            | UnknownTopicOrPartition
            | UnknownPartition
            | InvalidTopic
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | Authentication
            | SaslAuthenticationFailed
            | UnsupportedSASLMechanism
            | MessageSizeTooLarge
            | InvalidMessageSize
            | MessageBatchTooLarge
            | InvalidRecord
            | InvalidRequiredAcks
            | InvalidArgument
            | InvalidConfig
            | PolicyViolation
            | UnsupportedVersion
            | UnsupportedFeature
            | UnsupportedForMessageFormat
            | UnsupportedCompressionType
    )
}

fn build_producer(
    settings: &KafkaSettings,
    publish_timeout: Duration,
) -> Result<(KafkaProducer, Arc<ClientSignals>), KafkaError> {
    let signals = Arc::new(ClientSignals::default());
    let context = BridgeContext {
        signals: signals.clone(),
        error_log: LogThrottle::new(ERROR_LOG_INTERVAL),
        secrets: settings.options.secret_values(),
    };
    let config = settings.producer_config(publish_timeout);
    let producer = KafkaProducer::from_config_and_context(&config, context)?;
    Ok((producer, signals))
}

/// Checks the brokers and topics at every interval, and rebuilds the producer after a fatal
/// error or after [`WEDGED_AFTER_ERRORS`] suspect failures. Shutdown aborts it.
async fn supervise(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.settings.health_check_interval_ms);
    let mut rebuild_delay = MIN_REBUILD_DELAY;
    let mut rebuilds_in_a_row: u32 = 0;
    let mut producer_built = Instant::now();
    loop {
        let signals = shared.signals();
        let cause = match shared.producer().client().fatal_error() {
            Some((code, reason)) => Some(format!("fatal error {code}: {reason}")),
            None if signals.replacement_requested.load(Ordering::SeqCst) => {
                Some("repeated failures that point at the producer".to_owned())
            }
            None => None,
        };
        if let Some(cause) = cause {
            if producer_built.elapsed() >= STABLE_PRODUCER_AGE {
                rebuild_delay = MIN_REBUILD_DELAY;
                rebuilds_in_a_row = 0;
            }
            rebuilds_in_a_row += 1;
            // A broker that fails every new producer would repeat this line at each rebuild.
            if rebuilds_in_a_row <= 3 || rebuilds_in_a_row.is_power_of_two() {
                error!(
                    rebuilds_in_a_row = rebuilds_in_a_row, cause:% = cause;
                    "Kafka producer can no longer publish; building a new producer in {rebuild_delay:?}."
                );
            }
            sleep(rebuild_delay).await;
            rebuild_delay = (rebuild_delay * 2).min(MAX_REBUILD_DELAY);
            if rebuild(&shared).await {
                producer_built = Instant::now();
            }
            continue;
        }

        let reports_before = signals.down_reports.load(Ordering::SeqCst);
        let health = check(&shared).await;
        if health == Health::Ready && signals.down_reports.load(Ordering::SeqCst) == reports_before
        {
            signals.brokers_down.store(false, Ordering::SeqCst);
        }
        shared.set_health(health);
        shared.checked.send_replace(true);

        tokio::select! {
            () = sleep(interval) => {}
            () = signals.error_reported.notified() => {}
        }
    }
}

/// Replaces a producer that can no longer publish, and returns whether it did. The old
/// producer's unfinished messages have failed already. Creating and dropping a producer block
/// their thread (TLS files are read, threads are joined), so both run on blocking threads.
/// The old producer is dropped once the requests still holding it have finished.
async fn rebuild(shared: &Shared) -> bool {
    let settings = shared.settings.clone();
    let publish_timeout = shared.publish_timeout;
    let built = tokio::task::spawn_blocking(move || build_producer(&settings, publish_timeout))
        .await
        .map_err(|cause| cause.to_string())
        .and_then(|built| built.map_err(|cause| cause.to_string()));
    let (producer, signals) = match built {
        Ok(built) => built,
        Err(cause) => {
            error!(cause:% = cause; "Building a new Kafka producer failed; retrying.");
            return false;
        }
    };

    let retired = std::mem::replace(
        &mut *shared
            .producer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        Arc::new(producer),
    );
    *shared
        .signals
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = signals;
    info!("Built a new Kafka producer.");

    // A request keeps its reference to the producer for at most its publish timeout.
    let retire_wait = shared.publish_timeout * 2;
    tokio::spawn(async move {
        let deadline = Instant::now() + retire_wait;
        while Arc::strong_count(&retired) > 1 && Instant::now() < deadline {
            sleep(Duration::from_millis(100)).await;
        }
        let _ = tokio::task::spawn_blocking(move || drop(retired)).await;
    });
    true
}

/// Fetches the metadata of both topics, creating missing ones when configured to.
async fn check(shared: &Shared) -> Health {
    let settings = &shared.settings;
    let mut health = fetch_topics(shared).await;
    if settings.create_topics
        && let Health::MissingTopics(missing) = &health
    {
        create_topics(settings, missing).await;
        health = fetch_topics(shared).await;
    }
    health
}

async fn fetch_topics(shared: &Shared) -> Health {
    let limit = Duration::from_millis(shared.settings.metadata_timeout_ms);
    let producer = shared.producer();
    let topics = [
        shared.settings.topic_completed.clone(),
        shared.settings.topic_failed.clone(),
    ];
    // fetch_metadata blocks its thread until the broker replies or the limit passes.
    let fetched = tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        for topic in topics {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(limit))?;
            let found = metadata.topics().iter().find(|found| found.name() == topic);
            match found.map(|found| (found.error(), found.partitions().is_empty())) {
                None | Some((Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART), _)) => {
                    missing.push(topic)
                }
                Some((Some(error), _)) => {
                    errors.push(format!("{topic}: {}", RDKafkaErrorCode::from(error)))
                }
                Some((None, true)) => missing.push(topic),
                Some((None, false)) => {}
            }
        }
        Ok::<_, KafkaError>((missing, errors))
    });
    match timeout(limit * 3, fetched).await {
        Ok(Ok(Ok((missing, _)))) if !missing.is_empty() => Health::MissingTopics(missing),
        Ok(Ok(Ok((_, errors)))) if !errors.is_empty() => Health::TopicErrors(errors),
        Ok(Ok(Ok(_))) => Health::Ready,
        Ok(Ok(Err(cause))) => Health::Unreachable(cause.to_string()),
        Ok(Err(cause)) => Health::Unreachable(cause.to_string()),
        Err(_) => Health::Unreachable(format!("no metadata within {:?}", limit * 3)),
    }
}

/// Creates the topics with the configured partition count and replication factor. A topic
/// that another replica created in the meantime counts as created.
async fn create_topics(settings: &KafkaSettings, topics: &[String]) {
    let limit = Duration::from_millis(settings.metadata_timeout_ms);
    let mut config = settings.producer_config(limit);
    // The admin client takes the connection properties (TLS, SASL) of the producer.
    for property in [
        "enable.idempotence",
        "acks",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "request.timeout.ms",
    ] {
        config.remove(property);
    }
    // Creating a client reads TLS files and starts threads, so it runs on a blocking thread.
    let created =
        tokio::task::spawn_blocking(move || config.create::<AdminClient<DefaultClientContext>>())
            .await
            .map_err(|cause| cause.to_string())
            .and_then(|created| created.map_err(|cause| cause.to_string()));
    let admin = match created {
        Ok(admin) => admin,
        Err(cause) => {
            error!(cause:% = cause; "Creating the Kafka admin client failed.");
            return;
        }
    };
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            NewTopic::new(
                topic,
                settings.topic_partitions,
                TopicReplication::Fixed(settings.topic_replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Timeout::After(limit)))
        .request_timeout(Some(Timeout::After(limit)));
    match timeout(limit * 2, admin.create_topics(&new_topics, &options)).await {
        Ok(Ok(results)) => {
            for result in results {
                match result {
                    Ok(topic) => info!(
                        topic = topic.as_str(),
                        partitions = settings.topic_partitions,
                        replication_factor = settings.topic_replication_factor;
                        "Created Kafka topic."
                    ),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        error!(
                            topic = topic.as_str(), cause:% = code;
                            "Creating a Kafka topic failed."
                        )
                    }
                }
            }
        }
        Ok(Err(cause)) => error!(cause:% = cause; "Creating Kafka topics failed."),
        Err(_) => error!("Creating Kafka topics timed out after {:?}.", limit * 2),
    }
    // The admin client's drop joins its thread.
    let _ = tokio::task::spawn_blocking(move || drop(admin)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_code() {
        let timeout = Duration::from_millis(3_500);
        let permanent = [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::MessageSizeTooLarge,
        ];
        for code in permanent {
            let error = classify(&KafkaError::MessageProduction(code), timeout);
            assert!(!error.is_retriable(), "{code:?} is permanent");
        }

        let retriable = [
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::Fatal,
        ];
        for code in retriable {
            let error = classify(&KafkaError::MessageProduction(code), timeout);
            assert!(error.is_retriable(), "{code:?} is retriable");
        }

        let error = classify(
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            timeout,
        );
        assert!(
            matches!(error, PublishError::Timeout(limit) if limit == timeout),
            "{error:?}"
        );
    }
}
