//! RabbitMQ publisher: one connection and a pool of confirm-mode channels shared by all
//! requests, kept alive by a background task that reconnects with exponential backoff. While the
//! link is down, publishes fail at once so that requests get a fast 503.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use log::{error, info, warn};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use super::channel_pool::ChannelPool;
use super::{PublishError, Publisher};
use crate::config::RabbitMqSettings;
use crate::dead_letter::{DEAD_LETTER_TYPE, DeadLetter};
use crate::event::{CLOUDEVENTS_CONTENT_TYPE, Event, EventType};

/// AMQP delivery mode that makes the broker write the message to disk.
const PERSISTENT: u8 = 2;

/// AMQP reply code of a normal close.
const REPLY_SUCCESS: u16 = 200;

/// Maximum startup delay spent waiting for the first connection. HTTP, `/healthz` included,
/// is not served until it ends.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// How many publish timeouts long a timed-out publish keeps the broker not ready.
const STALL_WINDOW_FACTOR: u64 = 2;

/// How often the supervisor checks the channel between connection events.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    channels: Arc<ChannelPool>,
}

impl Link {
    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channels.is_intact()
    }

    fn is_same(&self, other: &Link) -> bool {
        Arc::ptr_eq(&self.channels, &other.channels)
    }
}

struct Shared {
    settings: RabbitMqSettings,
    /// Whether `queue_invalid` is declared along with the event queues.
    declare_dead_letter_queue: bool,
    link: RwLock<Option<Link>>,
    /// Wakes the supervisor when a publish saw the channel fail.
    link_failed: Notify,
    /// Until when (milliseconds since `started`) the broker counts as not ready because a
    /// publish on the current link timed out; 0 when none did. A broker that stopped
    /// responding keeps the connection looking open. The next confirm clears it, and it
    /// expires after [`STALL_WINDOW_FACTOR`] publish timeouts, so that a short stall does not
    /// keep a replica out of the load balancer when no request arrives to clear it.
    stalled_until_ms: AtomicU64,
    /// Set while the broker blocks publishing on the connection (a memory or disk alarm).
    blocked: AtomicBool,
    started: Instant,
    stopping: AtomicBool,
    stop: Notify,
    connected: watch::Sender<bool>,
}

impl Shared {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn current_link(&self) -> Option<Link> {
        self.link
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_link(&self, link: Option<Link>) {
        let connected = link.is_some();
        self.stalled_until_ms.store(0, Ordering::SeqCst);
        self.blocked.store(false, Ordering::SeqCst);
        *self
            .link
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = link;
        self.connected.send_replace(connected);
    }
}

/// Publishes events to a RabbitMQ topic exchange with publisher confirms.
pub struct RabbitMqPublisher {
    shared: Arc<Shared>,
    publish_timeout: Duration,
    /// The connection supervisor, awaited on shutdown while it closes the link.
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl RabbitMqPublisher {
    /// Starts the connection supervisor and waits briefly for the first connection, so that
    /// the first requests find it open. The bridge starts even when RabbitMQ is down, and
    /// requests get 503 until the background reconnect succeeds. With `dead_letters`, the
    /// dead-letter queue is declared too, when `declare_queues` is set.
    pub async fn start(
        settings: RabbitMqSettings,
        dead_letters: bool,
        publish_timeout: Duration,
    ) -> Self {
        let (connected, mut connected_changes) = watch::channel(false);
        let shared = Arc::new(Shared {
            settings,
            declare_dead_letter_queue: dead_letters,
            link: RwLock::new(None),
            link_failed: Notify::new(),
            stalled_until_ms: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            connected,
        });
        let supervisor = tokio::spawn(supervise(shared.clone()));

        let first_connect =
            Duration::from_millis(shared.settings.connect_timeout_ms).min(FIRST_CONNECT_WAIT);
        if timeout(first_connect, connected_changes.wait_for(|up| *up))
            .await
            .is_err()
        {
            warn!(
                url:% = shared.settings.url;
                "RabbitMQ is not reachable yet; answering 503 until the connection is up."
            );
        }
        Self {
            shared,
            publish_timeout,
            supervisor: Mutex::new(Some(supervisor)),
        }
    }

    /// Tracks stalls of the current link for readiness. A late result from a replaced link
    /// is ignored, because it is no evidence about the new one.
    fn record_outcome(&self, link: &Link, timed_out: bool) {
        let current = self.shared.current_link();
        if !current.is_some_and(|current| current.is_same(link)) {
            return;
        }
        let stalled_until = if timed_out {
            let window = self.publish_timeout.as_millis() as u64 * STALL_WINDOW_FACTOR;
            self.shared.elapsed_ms() + window
        } else {
            0
        };
        self.shared
            .stalled_until_ms
            .store(stalled_until, Ordering::SeqCst);
    }

    /// Publishes `payload` with the mandatory flag and waits for the broker's confirmation.
    /// With `tracks_stalls`, a timeout marks the broker stalled for readiness and a confirm
    /// clears that mark.
    async fn publish_confirmed(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        tracks_stalls: bool,
    ) -> Result<(), PublishError> {
        let link = self
            .shared
            .current_link()
            .ok_or(PublishError::NotConnected)?;
        let exchange = self.shared.settings.exchange.as_str();
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        // NOTE: the time spent waiting for a free channel counts against the publish timeout,
        // so an exhausted pool also ends in `Timeout` and marks the broker not ready.
        let confirmation = timeout(self.publish_timeout, async {
            let mut lease = link.channels.acquire().await;
            let confirmation = async {
                lease
                    .channel()
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        options,
                        payload,
                        properties,
                    )
                    .await?
                    .await
            }
            .await;
            if confirmation.is_ok() {
                lease.finish();
            }
            confirmation
        })
        .await;

        if tracks_stalls {
            self.record_outcome(&link, confirmation.is_err());
        }
        match confirmation {
            Err(_) => Err(PublishError::Timeout(self.publish_timeout)),
            Ok(Err(cause)) => {
                // The lease was dropped unfinished, and a channel closed by the broker has
                // marked the pool broken; the supervisor rebuilds the link.
                self.shared.link_failed.notify_one();
                Err(PublishError::Broker(cause.to_string()))
            }
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::Unroutable {
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.to_string(),
            }),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Broker(
                "publisher confirms are not enabled on the channel".to_owned(),
            )),
        }
    }

    fn dead_letter_properties(&self, dead_letter: &DeadLetter) -> BasicProperties {
        BasicProperties::default()
            .with_content_type(CLOUDEVENTS_CONTENT_TYPE.into())
            .with_delivery_mode(PERSISTENT)
            .with_type(DEAD_LETTER_TYPE.into())
            .with_timestamp(dead_letter.unix_time())
            .with_app_id(self.shared.settings.app_id.clone().into())
            .with_message_id(dead_letter.id.as_str().into())
    }

    fn properties(&self, event: &Event) -> BasicProperties {
        let properties = BasicProperties::default()
            .with_content_type(CLOUDEVENTS_CONTENT_TYPE.into())
            .with_delivery_mode(PERSISTENT)
            .with_type(event.event_type.as_str().into())
            .with_timestamp(event.unix_time())
            .with_app_id(self.shared.settings.app_id.clone().into());
        // AMQP short strings hold at most 255 bytes, and a task id of 256 characters can
        // exceed that. The id is always in the CloudEvents document itself.
        match ShortString::try_new(event.id.as_str()) {
            Ok(message_id) => properties.with_message_id(message_id),
            Err(_) => properties,
        }
    }
}

#[async_trait]
impl Publisher for RabbitMqPublisher {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let routing_key = event.event_type.as_str();
        self.publish_confirmed(routing_key, &event.payload, self.properties(event), true)
            .await
    }

    async fn publish_dead_letter(&self, dead_letter: &DeadLetter) -> Result<(), PublishError> {
        let routing_key = self.shared.settings.dead_letter_routing_key.as_str();
        let properties = self.dead_letter_properties(dead_letter);
        self.publish_confirmed(routing_key, &dead_letter.payload, properties, false)
            .await
    }

    fn is_connected(&self) -> bool {
        let open = self
            .shared
            .current_link()
            .is_some_and(|link| link.is_open());
        let stalled =
            self.shared.stalled_until_ms.load(Ordering::SeqCst) > self.shared.elapsed_ms();
        open && !stalled && !self.shared.blocked.load(Ordering::SeqCst)
    }

    async fn shutdown(&self, limit: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.notify_one();
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // The supervisor owns the link and closes it once notified of the stop.
        if let Some(supervisor) = supervisor
            && timeout(limit, supervisor).await.is_err()
        {
            warn!("RabbitMQ connection did not close within {limit:?}.");
        }
    }
}

/// Keeps one link open until shutdown, reconnecting with exponential backoff.
async fn supervise(shared: Arc<Shared>) {
    let settings = &shared.settings;
    let min_delay = Duration::from_millis(settings.reconnect_min_delay_ms);
    let max_delay = Duration::from_millis(settings.reconnect_max_delay_ms);
    let mut delay = min_delay;
    let mut attempt: u32 = 0;

    while !shared.stopping.load(Ordering::SeqCst) {
        attempt += 1;
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        match timeout(
            connect_timeout,
            open_link(settings, shared.declare_dead_letter_queue),
        )
        .await
        {
            Ok(Ok(link)) => {
                info!(
                    url:% = settings.url, exchange = settings.exchange.as_str();
                    "Connected to RabbitMQ."
                );
                shared.set_link(Some(link.clone()));
                delay = min_delay;
                attempt = 0;
                wait_for_loss(&shared, &link).await;
                shared.set_link(None);
                if shared.stopping.load(Ordering::SeqCst) {
                    close_link(&link).await;
                    break;
                }
                error!(url:% = settings.url; "RabbitMQ connection or channel lost; reconnecting.");
                // Drop a half-open connection so that its socket does not linger.
                if link.connection.status().connected() {
                    let _ = timeout(
                        connect_timeout,
                        link.connection.close(REPLY_SUCCESS, "reconnecting".into()),
                    )
                    .await;
                }
                continue;
            }
            Ok(Err(cause)) => warn!(
                url:% = settings.url, attempt = attempt, cause:% = cause;
                "Connecting to RabbitMQ failed; retrying in {delay:?}."
            ),
            Err(_) => warn!(
                url:% = settings.url, attempt = attempt;
                "Connecting to RabbitMQ timed out after {connect_timeout:?}; retrying in {delay:?}."
            ),
        }
        tokio::select! {
            () = sleep(delay) => {}
            () = shared.stop.notified() => break,
        }
        delay = (delay * 2).min(max_delay);
    }
}

/// Closes the channel, then the connection, as a clean AMQP shutdown.
async fn close_link(link: &Link) {
    link.channels.close().await;
    if link.connection.status().connected()
        && let Err(cause) = link.connection.close(REPLY_SUCCESS, "OK".into()).await
    {
        warn!(cause:% = cause; "Closing the RabbitMQ connection failed.");
        return;
    }
    info!("RabbitMQ connection closed.");
}

/// Returns when the link breaks or shutdown begins.
async fn wait_for_loss(shared: &Shared, link: &Link) {
    let mut events = link.connection.events_listener();
    let mut health_check = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(cause)) => {
                    warn!(cause:% = cause; "RabbitMQ connection reported an error.");
                    return;
                }
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    shared.blocked.store(true, Ordering::SeqCst);
                    warn!(
                        reason:% = reason;
                        "RabbitMQ blocked the connection; publishes will time out until it is unblocked."
                    );
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    shared.blocked.store(false, Ordering::SeqCst);
                    info!("RabbitMQ unblocked the connection.");
                }
                Some(_) => {}
                None => return,
            },
            _ = health_check.tick() => {
                if !link.is_open() {
                    return;
                }
            }
            () = shared.link_failed.notified() => {
                if !link.is_open() {
                    return;
                }
            }
            () = shared.stop.notified() => return,
        }
    }
}

/// Connects, declares the configured topology and opens the pool of confirm-mode channels.
async fn open_link(
    settings: &RabbitMqSettings,
    declare_dead_letter_queue: bool,
) -> Result<Link, lapin::Error> {
    let properties =
        ConnectionProperties::default().with_connection_name(settings.app_id.clone().into());
    // `Settings::validate` parsed this URL already.
    let mut uri: AMQPUri = settings
        .url
        .expose()
        .parse()
        .map_err(|error: String| lapin::Error::from(std::io::Error::other(error)))?;
    uri.query.heartbeat.get_or_insert(settings.heartbeat_secs);
    let connection = Connection::connect_uri(uri, properties).await?;
    // Declarations run on a channel of their own, closed before publishing starts.
    let channel = connection.create_channel().await?;
    let exchange = settings.exchange.as_str();
    if settings.declare_exchange {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    } else {
        check_exchange_exists(&connection, exchange).await;
    }

    if settings.declare_queues {
        let mut bindings = vec![
            (&settings.queue_completed, EventType::TaskCompleted.as_str()),
            (&settings.queue_failed, EventType::TaskFailed.as_str()),
        ];
        if declare_dead_letter_queue {
            bindings.push((
                &settings.queue_invalid,
                settings.dead_letter_routing_key.as_str(),
            ));
        }
        for (queue, routing_key) in bindings {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    channel.close(REPLY_SUCCESS, "OK".into()).await?;

    let connection = Arc::new(connection);
    let replace_timeout = Duration::from_millis(settings.connect_timeout_ms);
    let channels = ChannelPool::open(
        connection.clone(),
        settings.channel_pool_size,
        replace_timeout,
    )
    .await?;
    Ok(Link {
        connection,
        channels,
    })
}

/// Logs an error when the exchange is missing. A passive declare of a missing exchange
/// closes its channel, so the check runs on a channel of its own.
async fn check_exchange_exists(connection: &Connection, exchange: &str) {
    let Ok(probe) = connection.create_channel().await else {
        return;
    };
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    match probe
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = probe.close(REPLY_SUCCESS, "OK".into()).await;
        }
        Err(cause) => error!(
            exchange:% = exchange, cause:% = cause;
            "RabbitMQ exchange does not exist and rabbitmq.declare_exchange is false; publishes will fail until it is created."
        ),
    }
}
