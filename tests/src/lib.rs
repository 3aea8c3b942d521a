//! Test harness: real Redis, a real Kafka-protocol broker (tansu) and real SQL databases,
//! reached at the addresses `dev/stack up` provides (overridable by environment variables).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::event::{EventConfig, EventId};
use coupon_core::kafka::KafkaSettings;
use coupon_core::provision;
use coupon_core::redis::keyspace::{self, EventSnapshot};
use coupon_core::redis::{RedisConnection, RedisHandle};
use coupon_service::app::{Api, ApiSettings, Consumer, ConsumerSettings};
use coupon_service::http::ApiState;
use coupon_service::sql::Store;
use tokio::sync::watch;

pub mod cluster;
pub mod jwt;
pub mod kafka_filter;
pub mod local_cluster;
pub mod stand_in_node;
pub mod tcp_gate;
pub mod tls;

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn postgres_url() -> String {
    std::env::var("POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A fresh SQLite database file for one test.
pub fn sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!("{}.db", unique("coupon-test")));
    format!("sqlite://{}", path.display())
}

/// A name no other test (or earlier run) uses: lower-case, valid as event name and topic.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}-{}", std::process::id(), jiff::Timestamp::now().as_microsecond(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Logs of in-process components go to the test output (shown for failing tests).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| coupon_core::telemetry::init_logging(coupon_core::telemetry::LogFormat::Text, "warn"));
}

pub fn kafka(brokers: &str) -> KafkaSettings {
    KafkaSettings::new(brokers)
}

pub async fn redis() -> RedisConnection {
    RedisHandle::connect_with_deadline(&redis_url(), Duration::from_secs(10)).await.expect("Redis is up (dev/stack up)")
}

/// Polls `probe` every 20 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A provisioned event on its own topic.
#[derive(Clone, Debug)]
pub struct TestEvent {
    pub id: EventId,
    pub topic: String,
    pub limit: i64,
}

impl TestEvent {
    pub fn key(&self) -> String {
        self.id.to_string()
    }
}

/// Has the gate issue each user a coupon of the (unsharded) event, in order, as an api does
/// before producing the record; returns their slots. A test that produces records by hand
/// issues them first: the consumer refuses a record whose slot no gate issued to its user.
/// Their delivery lease is ten minutes, so healing leaves them alone within a test.
pub async fn issue(event: &TestEvent, users: &[&str]) -> Vec<i64> {
    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.expect("Redis is up");
    let layout = keyspace::EventLayout::single(&event.id);
    let mut slots = Vec::with_capacity(users.len());
    for user in users {
        match keyspace::apply(&mut conn, &layout, user, Duration::from_secs(600), None).await.unwrap().0 {
            keyspace::GateDecision::Issued { slot, .. } => slots.push(slot),
            other => panic!("{user} was not issued a coupon: {other:?}"),
        }
    }
    slots
}

/// Provisions an event open now for ten minutes, on a new topic of `partitions` partitions.
pub async fn provision_event(brokers: &str, namespace: &str, limit: i64, partitions: i32) -> TestEvent {
    provision_event_on(&redis_url(), brokers, namespace, limit, partitions).await
}

/// As `provision_event`, in the Redis at `redis_url` (a test's own).
pub async fn provision_event_on(redis_url: &str, brokers: &str, namespace: &str, limit: i64, partitions: i32) -> TestEvent {
    let name = unique("ev");
    let id = EventId::new(namespace, &name).unwrap();
    let topic = format!("coupons.{name}");
    let config = EventConfig::open_now(limit, &topic, Duration::from_secs(600));
    let admin = kafka(brokers).admin().unwrap();
    let mut conn = RedisHandle::connect_with_deadline(redis_url, Duration::from_secs(10)).await.expect("Redis is up");
    provision::provision_event(&mut conn, &admin, &id, &config, partitions, 1).await.expect("provision");
    TestEvent { id, topic, limit }
}

/// Runs `$check(database_url)` as three tests, one per SQL dialect the consumer supports:
/// `$name::postgres`, `$name::mariadb` and `$name::sqlite`.
#[macro_export]
macro_rules! on_every_dialect {
    ($name:ident, $check:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$check($crate::postgres_url()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mariadb() {
                super::$check($crate::mysql_url()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$check($crate::sqlite_url()).await;
            }
        }
    };
}

/// A store with the migrations applied.
pub async fn migrated_store(database_url: &str) -> Store {
    let store = Store::connect(database_url).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// An event with the api and a consumer (writing to `database_url`) running in this process.
pub struct InProcessStack {
    pub event: TestEvent,
    pub store: Store,
    pub api: InProcessApi,
    pub consumer: InProcessConsumer,
}

impl InProcessStack {
    pub async fn start(database_url: &str, namespace: &str, limit: i64, partitions: i32) -> Self {
        let brokers = kafka_brokers();
        let event = provision_event(&brokers, namespace, limit, partitions).await;
        let store = migrated_store(database_url).await;
        let api = InProcessApi::start(namespace, &brokers).await;
        let consumer = InProcessConsumer::start(database_url, &[&event.topic], &brokers);
        Self { event, store, api, consumer }
    }
}

/// Redis state of an event, for "nothing changed" assertions.
pub type RedisSnapshot = EventSnapshot;

pub async fn redis_snapshot(id: &EventId) -> RedisSnapshot {
    keyspace::snapshot(&mut redis().await, id).await.unwrap()
}

/// An api served in this process on an ephemeral port, built as the binary builds it.
pub struct InProcessApi {
    pub base_url: String,
    /// Its ops listener: `/metrics`, `/openapi.json`.
    pub ops_url: String,
    pub state: Arc<ApiState>,
    stop: watch::Sender<bool>,
}

impl InProcessApi {
    /// Starts the api with its readiness probes and waits until it is ready.
    pub async fn start(namespace: &str, brokers: &str) -> Self {
        let settings =
            ApiSettings { namespace: namespace.to_owned(), redis_url: redis_url(), kafka: kafka(brokers), ..ApiSettings::default() };
        Self::start_ready(settings).await
    }

    /// Starts the api from `settings` and waits until it is ready (Redis and a broker reached).
    pub async fn start_ready(settings: ApiSettings) -> Self {
        let api = Self::start_with(settings).await;
        let state = api.state.clone();
        wait_until("api ready", Duration::from_secs(30), || {
            let ready = state.health.all_ready();
            async move { ready.then_some(()) }
        })
        .await;
        api
    }

    /// Starts the api without probes: the test sets `state.health` itself.
    pub async fn start_without_probes(namespace: &str, brokers: &str, produce_timeout: Duration) -> Self {
        Self::start_with_redis(namespace, brokers, produce_timeout, &redis_url()).await
    }

    /// Starts the api without probes against the given Redis.
    pub async fn start_with_redis(namespace: &str, brokers: &str, produce_timeout: Duration, redis_url: &str) -> Self {
        let settings = ApiSettings {
            namespace: namespace.to_owned(),
            redis_url: redis_url.to_owned(),
            kafka: kafka(brokers),
            produce_timeout,
            readiness_probes: false,
            ..ApiSettings::default()
        };
        Self::start_with(settings).await
    }

    /// Starts the api from `settings` once its Redis is connected.
    pub async fn start_with(settings: ApiSettings) -> Self {
        init_logging();
        let (stop, stop_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Api::start(settings, listener, Some(ops), stop_rx).unwrap();
        api.state.redis.wait().await;
        Self { base_url: api.base_url(), ops_url: format!("http://{}", api.ops_addr.unwrap()), state: api.state.clone(), stop }
    }

    /// Starts the api from `settings` without waiting for its Redis (which may never come).
    pub async fn start_with_settings_unconnected(settings: ApiSettings) -> Self {
        init_logging();
        let (stop, stop_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Api::start(settings, listener, Some(ops), stop_rx).unwrap();
        Self { base_url: api.base_url(), ops_url: format!("http://{}", api.ops_addr.unwrap()), state: api.state.clone(), stop }
    }

    /// Sends the stop signal (as SIGTERM does to the binary).
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn apply_url(&self, event: &EventId) -> String {
        format!("{}/v1/events/{}/apply", self.base_url, event.name())
    }
}

impl Drop for InProcessApi {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A consumer running in this process, built as the binary builds it.
pub struct InProcessConsumer {
    stop: watch::Sender<bool>,
    consumer: Option<Consumer>,
}

impl InProcessConsumer {
    pub fn start(database_url: &str, topics: &[&str], brokers: &str) -> Self {
        Self::start_with_redis(database_url, topics, brokers, &redis_url())
    }

    pub fn start_with_redis(database_url: &str, topics: &[&str], brokers: &str, redis_url: &str) -> Self {
        Self::start_with(ConsumerSettings {
            database_url: database_url.to_owned(),
            redis_url: redis_url.to_owned(),
            kafka: kafka(brokers),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            group_id: unique("group"),
            ..ConsumerSettings::default()
        })
    }

    pub fn start_with(settings: ConsumerSettings) -> Self {
        init_logging();
        let (stop, stop_rx) = watch::channel(false);
        let consumer = Consumer::start(settings, None, stop_rx).unwrap();
        Self { stop, consumer: Some(consumer) }
    }

    /// The running consumer (health, metrics, assigned partitions).
    pub fn process(&self) -> &Consumer {
        self.consumer.as_ref().expect("running")
    }

    /// Stops after the batch in hand and returns the consumer's result.
    pub async fn stop(mut self) -> Result<(), coupon_service::consumer::ConsumerError> {
        let _ = self.stop.send(true);
        self.consumer.take().unwrap().stopped().await
    }
}

impl Drop for InProcessConsumer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Waits until the event has `rows` coupon rows, then asserts it has exactly that many.
/// Waits until the event has `rows` rows, then until the count has stayed put for two
/// seconds, and asserts it is still `rows`: a count that overshoots later fails the test.
pub async fn wait_for_rows(store: &Store, event: &str, rows: i64, timeout: Duration) {
    let reached = wait_for_at_least_rows(store, event, rows, timeout).await;
    assert_eq!(reached, rows, "rows of {event} in {}", store.dialect());
    let settled = wait_for_stable_rows(store, event, Duration::from_secs(10)).await;
    assert_eq!(settled, rows, "rows of {event} in {} after they settled", store.dialect());
}

/// Polls the event's row count until it reaches `rows` or `timeout` passes; returns the
/// last count seen.
pub async fn wait_for_at_least_rows(store: &Store, event: &str, rows: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    let mut last = store.count_coupons(event).await.unwrap();
    while last < rows && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = store.count_coupons(event).await.unwrap();
    }
    last
}

/// Polls the event's row count until it has not changed for two seconds (or `timeout`
/// passed), and returns it: a count that is still growing is never taken as the answer.
pub async fn wait_for_stable_rows(store: &Store, event: &str, timeout: Duration) -> i64 {
    const STABLE_FOR: Duration = Duration::from_secs(2);
    let deadline = Instant::now() + timeout;
    let mut last = store.count_coupons(event).await.unwrap();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = store.count_coupons(event).await.unwrap();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= STABLE_FOR {
            break;
        }
    }
    last
}

/// A free TCP port on loopback (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process that is killed when dropped, with its stderr kept in a file.
pub struct ChildProcess {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl ChildProcess {
    pub fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_in(&std::env::temp_dir(), program, args, env)
    }

    /// As `spawn`, with `dir` as the working directory.
    pub fn spawn_in(dir: &Path, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("child")));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = tokio::process::Command::new(program);
        command.current_dir(dir);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).kill_on_drop(true);
        command.env("RUST_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Self { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// GETs `url` and returns the status (0 when nothing answers).
pub async fn http_status(url: &str) -> u16 {
    match reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// How an `OwnRedis` keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Append-only file, fsync after every write: a kill loses nothing acknowledged.
    EveryWrite,
    /// Append-only file, fsync once a second (Redis's default): a kill may lose up to a
    /// second of acknowledged writes.
    EverySecond,
    /// Snapshots only (`SAVE`), which a test can restore: Redis going back in time.
    Snapshots,
}

/// A Redis server owned by one test, so it can be paused, killed, restarted and rolled back
/// without disturbing the others.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    persistence: Persistence,
    process: Option<ChildProcess>,
}

impl OwnRedis {
    /// A Redis persisting every write to its append-only file.
    pub async fn start() -> Self {
        Self::start_with(Persistence::EveryWrite).await
    }

    pub async fn start_with(persistence: Persistence) -> Self {
        let dir = std::env::temp_dir().join(unique("own-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self { port: free_port(), dir, persistence, process: None };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `SAVE`, and keeps a copy of the snapshot for `restore_snapshot`.
    pub async fn save_snapshot(&self) {
        let mut conn = RedisHandle::connect_with_deadline(&self.url(), Duration::from_secs(10)).await.unwrap();
        redis::cmd("SAVE").query_async::<()>(&mut conn).await.unwrap();
        std::fs::copy(self.dir.join("dump.rdb"), self.dir.join("kept.rdb")).unwrap();
    }

    /// Kills the server and starts it again from the snapshot `save_snapshot` kept: every
    /// write since is lost, as after restoring a backup or failing over to a stale replica.
    pub async fn restore_snapshot(&mut self) {
        self.kill().await;
        std::fs::copy(self.dir.join("kept.rdb"), self.dir.join("dump.rdb")).unwrap();
        self.restart().await;
    }

    pub async fn restart(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.display().to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", "", "--dir", &dir];
        match self.persistence {
            Persistence::EveryWrite => args.extend(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::EverySecond => args.extend(["--appendonly", "yes", "--appendfsync", "everysec"]),
            Persistence::Snapshots => args.extend(["--appendonly", "no"]),
        }
        self.process = Some(ChildProcess::spawn(Path::new("redis-server"), &args, &[]));
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        wait_until("own Redis listening", Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
    }

    /// SIGKILL: no shutdown, no final save; only what the append-only file already holds.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.kill().await;
        }
    }
}

/// Applies for `user` at `url` (an api's apply URL): the status (0 when nothing answered) and
/// the JSON body.
pub async fn apply(client: &reqwest::Client, url: &str, user: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "userId": user }).to_string();
    match client.post(url).header("content-type", "application/json").body(body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or_default())
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// `/readyz` of a process at `base`: its status (0 when nothing answers) and body.
pub async fn readyz(base: &str) -> (u16, serde_json::Value) {
    match reqwest::Client::new().get(format!("{base}/readyz")).timeout(Duration::from_secs(2)).send().await {
        Ok(response) => (response.status().as_u16(), response.json().await.unwrap_or_default()),
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// Polls `/readyz` of the process at `base` until it reports `component` as `reachable`.
pub async fn wait_for_component(base: &str, component: &str, reachable: bool, timeout: Duration) -> u16 {
    wait_until(&format!("{component} reported {}", if reachable { "reachable" } else { "unreachable" }), timeout, || async move {
        let (status, body) = readyz(base).await;
        (body["components"][component] == serde_json::json!(reachable)).then_some(status)
    })
    .await
}

/// Polls `url` until it answers `status`, panicking with `what` after `timeout`.
pub async fn wait_for_status(what: &str, url: &str, status: u16, timeout: Duration) {
    wait_until(what, timeout, || async move { (http_status(url).await == status).then_some(()) }).await;
}

/// A tansu broker owned by one test, for tests that stop the broker.
pub struct OwnTansu {
    pub port: u16,
    /// `memory://tansu/` (lost on restart) or `sqlite://tansu.db` (kept in `dir`).
    storage: String,
    dir: PathBuf,
    process: Option<ChildProcess>,
    /// Where clients are sent after bootstrapping (default this broker's own port).
    advertised: Option<String>,
    /// Whether clients must authenticate with SASL (SCRAM users made by `add_scram_user`).
    authentication: bool,
}

impl OwnTansu {
    pub fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("TANSU") {
            return path.into();
        }
        let home = std::env::var("HOME").unwrap_or_default();
        let cargo = Path::new(&home).join(".cargo/bin/tansu");
        if cargo.exists() {
            cargo
        } else {
            "tansu".into()
        }
    }

    /// A broker with in-memory storage: a restart loses every topic and record.
    pub async fn start(port: u16) -> Self {
        Self::start_with(port, "memory://tansu/").await
    }

    /// A broker on tansu's SQLite engine in a fresh directory: topics, records, offsets and
    /// producer state survive a kill.
    pub async fn start_durable(port: u16) -> Self {
        Self::start_with(port, "sqlite://tansu.db").await
    }

    async fn start_with(port: u16, storage: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("tansu"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut tansu = Self { port, storage: storage.to_owned(), dir, process: None, advertised: None, authentication: false };
        tansu.restart().await;
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the running broker process logged.
    pub fn log_text(&self) -> String {
        self.process.as_ref().map(ChildProcess::log_text).unwrap_or_default()
    }

    /// SIGSTOP: the broker holds every connection open and answers nothing, as a broker in a
    /// long pause or behind a network partition does.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`: the broker handles what it was sent meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().and_then(|p| p.child.id()).expect("tansu is running");
        let status = std::process::Command::new("kill").arg(signal).arg(pid.to_string()).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// An in-memory broker that sends its clients to `advertised` after bootstrapping (a
    /// proxy in front of it, such as `kafka_filter::KafkaFilter`).
    pub async fn start_advertised(port: u16, advertised: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("tansu"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut tansu = Self {
            port,
            storage: "memory://tansu/".into(),
            dir,
            process: None,
            advertised: Some(advertised.to_owned()),
            authentication: false,
        };
        tansu.restart().await;
        tansu
    }

    /// A durable broker whose clients must authenticate with SCRAM as one of `users`
    /// (`name`, `password`, `scram256` or `scram512`), and which sends them to `advertised`
    /// (a TLS front, say) after bootstrapping. Users are stored while the broker still
    /// accepts anyone, then it restarts with authentication required.
    pub async fn start_authenticating(port: u16, advertised: &str, users: &[(&str, &str, &str)]) -> Self {
        let mut tansu = Self::start_durable(port).await;
        let broker = format!("tcp://127.0.0.1:{port}");
        for (name, password, mechanism) in users {
            let output = tokio::process::Command::new(Self::binary())
                .args(["user", "create", "--broker", &broker, "--mechanism", mechanism, name, password])
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "tansu user create: {}", String::from_utf8_lossy(&output.stderr));
        }
        tansu.stop().await;
        tansu.advertised = Some(advertised.to_owned());
        tansu.authentication = true;
        tansu.restart().await;
        tansu
    }

    /// Starts (again) on the same port and storage.
    pub async fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self.advertised.clone().unwrap_or_else(|| url.clone());
        let mut args = vec!["broker", "--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", &self.storage];
        if self.authentication {
            args.push("--authentication");
        }
        let process = ChildProcess::spawn_in(&self.dir, &Self::binary(), &args, &[("RUST_BACKTRACE", "1")]);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        wait_until("own tansu listening", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        self.process = Some(process);
    }

    /// SIGKILL: the broker stops at once, whatever it was writing.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.kill().await;
        }
    }

    /// SIGTERM, then waits (at most 10 s, then SIGKILL) for the broker to exit.
    pub async fn stop_gracefully(&mut self) {
        if self.process.is_some() {
            self.signal("-TERM");
        }
        if let Some(mut process) = self.process.take() {
            if tokio::time::timeout(Duration::from_secs(10), process.child.wait()).await.is_err() {
                let _ = process.child.kill().await;
            }
        }
    }
}

/// The first record on `topic`, read from the beginning (at most 30 s).
pub fn first_record_on(topic: &str) -> coupon_core::event::CouponRecord {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("first-record"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            return serde_json::from_slice(message.payload().unwrap_or_default()).expect("a coupon record");
        }
    }
    panic!("no record on {topic} within 30 s");
}
