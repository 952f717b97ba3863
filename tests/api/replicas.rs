//! Three bridge processes that share one Redis key prefix and one broker, as replicas behind a
//! load balancer do. Each event is published once, whichever replicas its re-deliveries reach,
//! and SIGTERM to one replica under load loses no event that got a 2xx.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::join_all;
use lapin::options::BasicGetOptions;
use lapin::{Connection, ConnectionProperties};
use redis::AsyncCommands;
use serde_json::Value;
use webhook_bridge::Settings;

use crate::helpers::*;
use crate::kafka_support::*;
use crate::proxy::{Mode, Proxy};

const REPLICAS: usize = 3;

/// Copies of a callback that each replica receives at once in a concurrent burst.
const COPIES_PER_REPLICA: usize = 2;

/// Bridge processes started with the same settings, each on its own port.
struct Replicas {
    processes: Vec<BridgeProcess>,
    ports: Vec<u16>,
    urls: Vec<String>,
}

impl Replicas {
    /// Starts the replicas with the environment that `environment` returns for each replica
    /// number and port, and waits until all are ready.
    async fn start(environment: impl Fn(usize, u16) -> Vec<(String, String)>) -> Self {
        let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
        let processes = ports
            .iter()
            .enumerate()
            .map(|(replica, &port)| {
                BridgeProcess::spawn(replica_environment(environment(replica, port)))
            })
            .collect();
        let bases: Vec<String> = ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let http = reqwest::Client::new();
        for base in &bases {
            wait_until_ready(&http, base).await;
        }
        let urls = bases.iter().map(|base| format!("{base}/webhook")).collect();
        Self {
            processes,
            ports,
            urls,
        }
    }

    /// Stops every replica that is still running with SIGTERM and checks that each exits 0.
    async fn stop(self) {
        for process in self.processes {
            let output = process.stop_with("TERM").await;
            let log = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "exit status {:?}\n{log}",
                output.status
            );
        }
    }
}

/// Adds the settings that every replica in these tests shares.
///
/// `redis.pending_wait_ms` is far above any publish time on a busy machine, so that a
/// re-delivery that waits for another replica's publish finds it finished and returns
/// `duplicate`, instead of 503 `delivery_in_progress` when the wait runs out. That lets the
/// tests require a 2xx for every copy. The shutdown timeout must cover that wait plus
/// `broker.publish_timeout_ms` and 3 x `redis.response_timeout_ms` (15 + 10 + 3 s at most
/// here). The access log is off because stderr is a pipe that is read only after the process
/// exits, and a line per request could fill it and block the replica.
fn replica_environment(mut environment: Vec<(String, String)>) -> Vec<(String, String)> {
    for (key, value) in [
        ("SERVER__ACCESS_LOG", "false"),
        ("REDIS__PENDING_WAIT_MS", "15000"),
        ("SERVER__SHUTDOWN_TIMEOUT_SECS", "30"),
    ] {
        let key = format!("WEBHOOK_BRIDGE__{key}");
        environment.retain(|(existing, _)| *existing != key);
        environment.push((key, value.to_owned()));
    }
    environment
}

/// One task outcome sent as a callback.
#[derive(Debug, Clone)]
struct Task {
    id: String,
    event_type: &'static str,
    body: String,
}

impl Task {
    /// Creates a task with a fresh id. Even numbers complete and odd numbers fail, so that a
    /// set of tasks publishes both event types.
    fn new(number: usize) -> Self {
        let id = unique_task_id();
        if number.is_multiple_of(2) {
            let body = completed_body(&id);
            Self {
                id,
                event_type: "task.completed",
                body,
            }
        } else {
            let body = failed_body(&id);
            Self {
                id,
                event_type: "task.failed",
                body,
            }
        }
    }

    /// Returns the Redis key of this task's event under `key_prefix`.
    fn dedup_key(&self, key_prefix: &str) -> String {
        let status = self.event_type.trim_start_matches("task.");
        format!("{key_prefix}{}:{status}", self.id)
    }
}

fn tasks(count: usize) -> Vec<Task> {
    (0..count).map(Task::new).collect()
}

/// Status code of a bridge response, and its `error` field, or its `status` field when it has
/// no error (`accepted`, `duplicate`).
#[derive(Debug)]
struct Response {
    status: u16,
    outcome: String,
}

impl Response {
    fn is_accepted(&self) -> bool {
        self.status == 200 && self.outcome == "accepted"
    }
}

/// Builds an HTTP client for callbacks. It drops a connection after one idle second, well
/// before the bridge closes it (the 5-second keep-alive default of actix-http 3.19), so that
/// no request goes out on a connection that a healthy replica is closing.
fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

async fn send(http: &reqwest::Client, url: &str, body: &str) -> reqwest::Result<Response> {
    let http_response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    let status = http_response.status().as_u16();
    let json: Value = http_response.json().await?;
    let outcome = json["error"].as_str().or(json["status"].as_str());
    Ok(Response {
        status,
        outcome: outcome.unwrap_or_default().to_owned(),
    })
}

/// Sends `task` to every replica at once, `COPIES_PER_REPLICA` times each, and checks that
/// every copy gets 200 and exactly one of them is `accepted`.
async fn send_burst(http: &reqwest::Client, urls: &[String], task: &Task) {
    let copies = urls
        .iter()
        .flat_map(|url| std::iter::repeat_n(url, COPIES_PER_REPLICA))
        .map(|url| async move { (url, send(http, url, &task.body).await) });
    let responses = join_all(copies).await;

    let mut accepted = 0;
    for (url, response) in responses {
        let response = response.unwrap_or_else(|error| panic!("request to {url} failed: {error}"));
        assert_eq!(
            response.status, 200,
            "{url} for task {}: {response:?}",
            task.id
        );
        match response.outcome.as_str() {
            "accepted" => accepted += 1,
            "duplicate" => {}
            other => panic!("{url} for task {}: unexpected status {other}", task.id),
        }
    }
    assert_eq!(accepted, 1, "accepted copies of task {}", task.id);
}

/// An event read back from the broker.
#[derive(Debug)]
struct Published {
    /// Queue or topic it was read from.
    place: String,
    task_id: String,
    event_type: String,
}

impl Published {
    fn parse(place: &str, payload: &[u8]) -> Self {
        let event: Value = serde_json::from_slice(payload).expect("event is JSON");
        Self {
            place: place.to_owned(),
            task_id: event["subject"].as_str().expect("subject").to_owned(),
            event_type: event["type"].as_str().expect("type").to_owned(),
        }
    }
}

/// Takes every message from both queues of `settings`.
async fn drain_queues(settings: &Settings) -> Vec<Published> {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("test connection to RabbitMQ");
    let channel = connection.create_channel().await.unwrap();
    let mut published = Vec::new();
    for queue in queues(settings) {
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            published.push(Published::parse(&queue, &message.delivery.data));
        }
    }
    let _ = connection.close(200, "OK".into()).await;
    published
}

/// Returns the completed and the failed queue of `settings`.
fn queues(settings: &Settings) -> [String; 2] {
    [
        settings.rabbitmq.queue_completed.clone(),
        settings.rabbitmq.queue_failed.clone(),
    ]
}

/// Reads both topics of `id` until each contains the number of events `tasks` should publish
/// there, and a moment longer, so that a duplicate shows up.
async fn consume_topics(id: &str, tasks: &[Task]) -> Vec<Published> {
    let [completed_topic, failed_topic] = topics_of(id);
    let completed = tasks
        .iter()
        .filter(|task| task.event_type == "task.completed")
        .count();
    let mut published = Vec::new();
    for (topic, expected) in [
        (completed_topic, completed),
        (failed_topic, tasks.len() - completed),
    ] {
        for message in consume(KAFKA_BROKERS, &topic, expected).await {
            published.push(Published::parse(&topic, &message.payload));
        }
    }
    published
}

/// Checks that `published` contains exactly one event of each task in `tasks`, of the task's
/// type and in the place for that type (`places` lists the completed place, then the failed
/// one), and no other event.
fn assert_each_published_once(published: &[Published], tasks: &[Task], places: &[String; 2]) {
    let mut by_task: BTreeMap<&str, Vec<&Published>> = BTreeMap::new();
    for event in published {
        by_task.entry(&event.task_id).or_default().push(event);
    }
    for task in tasks {
        let events = by_task.remove(task.id.as_str()).unwrap_or_default();
        assert_eq!(events.len(), 1, "events of task {}: {events:?}", task.id);
        let event = events[0];
        assert_eq!(
            event.event_type, task.event_type,
            "type of task {}",
            task.id
        );
        let place = if task.event_type == "task.completed" {
            &places[0]
        } else {
            &places[1]
        };
        assert_eq!(&event.place, place, "place of task {}", task.id);
    }
    assert!(by_task.is_empty(), "events of unknown tasks: {by_task:?}");
}

/// Runs `test`, then deletes the queues, exchange and Redis keys of `settings` and the Kafka
/// `topics`, also when `test` panicked, so that a failing run leaves nothing behind. The
/// replicas of a panicking `test` are killed when it is dropped, before the clean-up.
async fn clean_up_after(settings: &Settings, topics: &[String], test: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(test).catch_unwind().await;
    if !topics.is_empty() {
        delete_topics(KAFKA_BROKERS, topics).await;
    }
    remove_test_data(settings).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_redeliveries_publish_once() {
    let settings = test_settings();
    clean_up_after(&settings, &[], async {
        let replicas = Replicas::start(|_, port| bridge_environment(&settings, port)).await;
        let http = load_client();
        let tasks = tasks(30);

        for (number, task) in tasks.iter().enumerate() {
            // Each replica in turn receives the first delivery of a task.
            for delivery in 0..REPLICAS {
                let url = &replicas.urls[(number + delivery) % REPLICAS];
                let response = send(&http, url, &task.body)
                    .await
                    .unwrap_or_else(|error| panic!("request to {url} failed: {error}"));
                let expected = if delivery == 0 {
                    "accepted"
                } else {
                    "duplicate"
                };
                assert_eq!(
                    response.status, 200,
                    "{url} for task {}: {response:?}",
                    task.id
                );
                assert_eq!(
                    response.outcome, expected,
                    "delivery {delivery} of task {} to {url}",
                    task.id
                );
            }
        }

        replicas.stop().await;
        let published = drain_queues(&settings).await;
        assert_each_published_once(&published, &tasks, &queues(&settings));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redeliveries_publish_once() {
    let settings = test_settings();
    clean_up_after(&settings, &[], async {
        let replicas = Replicas::start(|_, port| bridge_environment(&settings, port)).await;
        let http = load_client();
        let tasks = tasks(50);

        for task in &tasks {
            send_burst(&http, &replicas.urls, task).await;
        }

        replicas.stop().await;
        let published = drain_queues(&settings).await;
        assert_each_published_once(&published, &tasks, &queues(&settings));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_concurrent_redeliveries_publish_once() {
    let settings = test_settings();
    let id = topic_id();
    let topics = topics_of(&id);
    create_topics(KAFKA_BROKERS, &topics).await;
    clean_up_after(&settings, &topics, async {
        let replicas = Replicas::start(|_, port| {
            kafka_bridge_environment(&settings, port, KAFKA_BROKERS, &id)
        })
        .await;
        let http = load_client();
        let tasks = tasks(50);

        for task in &tasks {
            send_burst(&http, &replicas.urls, task).await;
        }

        replicas.stop().await;
        let published = consume_topics(&id, &tasks).await;
        assert_each_published_once(&published, &tasks, &topics);
    })
    .await;
}

/// Clients in the SIGTERM test, each sending one callback at a time.
const CLIENTS: usize = 8;

/// Callbacks that the stopping replica accepts before its broker is held, so that it stops
/// under load.
const ACCEPTED_BEFORE_STOP: usize = 40;

/// Callbacks that the stopping replica must be publishing when SIGTERM arrives.
const PUBLISHING_AT_STOP: usize = 3;

/// How long the stopping replica's publishes stay held after it began to stop. A bridge that
/// waited for in-flight requests only briefly would drop them, because actix-server 2.9
/// checks once a second whether its shutdown timeout has passed. It stays well below the
/// publish timeout of 10 s.
const HOLD_AFTER_STOP: Duration = Duration::from_secs(2);

/// Callbacks each client still sends after the stopped replica exited. Clients send some of
/// them to the stopped replica until a refused connection marks it down, so at least one
/// callback is retried on another replica.
const CALLBACKS_AFTER_STOP: usize = 2 * REPLICAS;

/// Attempts of one callback, the first included, before a client gives up on it.
const MAX_ATTEMPTS: usize = 5;

/// Replica that gets SIGTERM.
const STOPPING: usize = 0;

/// State shared by the clients of the SIGTERM test.
struct Load {
    urls: Vec<String>,
    key_prefix: String,
    /// Replicas that refused a connection. Clients send them nothing more, as a load
    /// balancer's passive health check does.
    down: Vec<AtomicBool>,
    accepted_by_stopping: AtomicUsize,
    /// Dedup keys of the callbacks sent to the stopping replica and awaiting its response, by
    /// task id.
    outstanding: Mutex<BTreeMap<String, String>>,
    /// Set once the stopping replica has exited.
    stopped: AtomicBool,
}

/// The response of one replica, or the error of a request that got none.
#[derive(Debug)]
struct Attempt {
    replica: usize,
    response: Result<Response, String>,
}

impl Attempt {
    fn is_ok(&self) -> bool {
        matches!(&self.response, Ok(response) if response.status == 200)
    }

    fn is_accepted(&self) -> bool {
        matches!(&self.response, Ok(response) if response.is_accepted())
    }
}

impl Load {
    /// Sends callbacks one at a time, each to the next replica, until this client has sent
    /// `CALLBACKS_AFTER_STOP` after the stopping replica exited.
    async fn run_client(&self, http: reqwest::Client, client: usize) -> Vec<(Task, Vec<Attempt>)> {
        let mut sent = Vec::new();
        let mut after_stop = 0;
        for number in 0.. {
            if self.stopped.load(Ordering::SeqCst) {
                after_stop += 1;
            }
            if after_stop > CALLBACKS_AFTER_STOP {
                break;
            }
            assert!(number < 10_000, "client {client} ends its load");
            let task = Task::new(number);
            let attempts = self.deliver(&http, &task, client + number).await;
            sent.push((task, attempts));
        }
        sent
    }

    /// Sends `task` to the replicas in turn, starting with `first`, until one returns 200 or
    /// `MAX_ATTEMPTS` have failed, as a provider's retries through a load balancer would.
    async fn deliver(&self, http: &reqwest::Client, task: &Task, first: usize) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        let mut replica = first % REPLICAS;
        while attempts.len() < MAX_ATTEMPTS {
            replica = self.next_up(replica);
            if replica == STOPPING {
                let key = task.dedup_key(&self.key_prefix);
                self.outstanding
                    .lock()
                    .unwrap()
                    .insert(task.id.clone(), key);
            }
            let response = send(http, &self.urls[replica], &task.body).await;
            self.outstanding.lock().unwrap().remove(&task.id);
            match &response {
                Ok(response) if response.is_accepted() && replica == STOPPING => {
                    self.accepted_by_stopping.fetch_add(1, Ordering::SeqCst);
                }
                Err(error) if error.is_connect() => {
                    self.down[replica].store(true, Ordering::SeqCst);
                }
                _ => {}
            }
            let attempt = Attempt {
                replica,
                response: response.map_err(|error| format!("{error:?}")),
            };
            let ok = attempt.is_ok();
            attempts.push(attempt);
            if ok {
                break;
            }
            replica += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        attempts
    }

    /// Returns `replica`, or the next replica after it that is not down.
    fn next_up(&self, replica: usize) -> usize {
        (0..REPLICAS)
            .map(|offset| (replica + offset) % REPLICAS)
            .find(|&candidate| !self.down[candidate].load(Ordering::SeqCst))
            .expect("a replica is up")
    }

    /// Waits until at least `PUBLISHING_AT_STOP` callbacks sent to the stopping replica hold a
    /// pending claim in Redis, which means that the replica is publishing them, and returns
    /// their task ids.
    async fn wait_for_publishing(&self) -> BTreeSet<String> {
        let mut redis = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("test connection to Redis");
        let started = Instant::now();
        loop {
            let outstanding = self.outstanding.lock().unwrap().clone();
            let mut publishing = BTreeSet::new();
            for (task_id, key) in outstanding {
                let claim: Option<String> = redis.get(&key).await.expect("GET claim");
                if claim.is_some_and(|claim| claim.starts_with("pending:")) {
                    publishing.insert(task_id);
                }
            }
            if publishing.len() >= PUBLISHING_AT_STOP {
                return publishing;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "replica {STOPPING} is publishing {PUBLISHING_AT_STOP} callbacks, not {}",
                publishing.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until `port` refuses connections, which shows that the bridge on it closed its
/// listener and began to stop.
async fn wait_until_refused(port: u16) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replica on port {port} closed its listener"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_event() {
    let settings = test_settings();
    clean_up_after(&settings, &[], async {
        // The stopping replica reaches RabbitMQ through a proxy that the test can stall.
        let proxy = Proxy::start(AMQP_ADDRESS.parse().unwrap()).await;
        let stopping_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());
        let mut replicas = Replicas::start(|replica, port| {
            let mut environment = bridge_environment(&settings, port);
            // The publish timeout must outlast the stall of the stopping replica's publishes.
            environment.push((
                "WEBHOOK_BRIDGE__BROKER__PUBLISH_TIMEOUT_MS".to_owned(),
                "10000".to_owned(),
            ));
            if replica == STOPPING {
                let url = (
                    "WEBHOOK_BRIDGE__RABBITMQ__URL".to_owned(),
                    stopping_broker.clone(),
                );
                environment.push(url);
            }
            environment
        })
        .await;
        let load = Arc::new(Load {
            urls: replicas.urls.clone(),
            key_prefix: settings.redis.key_prefix.clone(),
            down: (0..REPLICAS).map(|_| AtomicBool::new(false)).collect(),
            accepted_by_stopping: AtomicUsize::new(0),
            outstanding: Mutex::new(BTreeMap::new()),
            stopped: AtomicBool::new(false),
        });
        let http = load_client();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let load = load.clone();
                let http = http.clone();
                tokio::spawn(async move { load.run_client(http, client).await })
            })
            .collect();

        let started = Instant::now();
        while load.accepted_by_stopping.load(Ordering::SeqCst) < ACCEPTED_BEFORE_STOP {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "replica {STOPPING} accepted {ACCEPTED_BEFORE_STOP} callbacks"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Hold the stopping replica's publishes so that callbacks are mid-publish when
        // SIGTERM arrives, and release them a while after the replica began to stop.
        proxy.set(Mode::Stall);
        let publishing = load.wait_for_publishing().await;
        let stopping = replicas.processes.remove(STOPPING);
        let stop = tokio::spawn(stopping.stop_with("TERM"));
        wait_until_refused(replicas.ports[STOPPING]).await;
        tokio::time::sleep(HOLD_AFTER_STOP).await;
        proxy.set(Mode::Forward);
        let output = stop.await.expect("stop task");
        load.stopped.store(true, Ordering::SeqCst);

        let mut sent = BTreeMap::new();
        for client in clients {
            for (task, attempts) in client.await.expect("client task") {
                sent.insert(task.id.clone(), (task, attempts));
            }
        }
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "exit status {:?}\n{log}",
            output.status
        );
        assert!(log.contains("SIGTERM received"), "{log}");

        for task_id in &publishing {
            let (_, attempts) = &sent[task_id];
            assert_eq!(attempts.len(), 1, "task {task_id}: {attempts:?}");
            assert_eq!(attempts[0].replica, STOPPING, "task {task_id}");
            assert!(
                attempts[0].is_accepted(),
                "the stopping replica finished publishing task {task_id}: {attempts:?}"
            );
        }

        let mut accepted = BTreeSet::new();
        let mut retried = 0;
        for (task, attempts) in sent.values() {
            let last = attempts.last().expect("one attempt");
            assert!(last.is_ok(), "task {} ends in 200: {attempts:?}", task.id);
            for attempt in &attempts[..attempts.len() - 1] {
                assert_eq!(
                    attempt.replica, STOPPING,
                    "only the stopped replica fails requests: task {}: {attempts:?}",
                    task.id
                );
            }
            if attempts.len() > 1 {
                retried += 1;
            }
            if attempts.iter().any(Attempt::is_accepted) {
                accepted.insert(task.id.clone());
            }
        }
        assert!(
            retried > 0,
            "some requests met the stopped replica and were retried"
        );

        replicas.stop().await;
        let published = drain_queues(&settings).await;
        let published_ids: BTreeSet<String> = published
            .iter()
            .map(|event| event.task_id.clone())
            .collect();
        let missing: Vec<_> = accepted.difference(&published_ids).collect();
        assert!(
            missing.is_empty(),
            "accepted but not published: {missing:?}"
        );
        let tasks: Vec<Task> = sent.into_values().map(|(task, _)| task).collect();
        assert_each_published_once(&published, &tasks, &queues(&settings));
    })
    .await;
}
