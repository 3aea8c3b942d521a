//! What the operator tests on the local control plane share: the Deployments an event
//! scales, events open a while from now, operator instances started as `coupon-operator run`
//! starts them (each as a ServiceAccount bound to the chart's operator rules, through a gate),
//! and waits on what the server holds.
//!
//! Real-time waits are parameters: `KUBE_TEST_LEASE` (the Lease's duration, default 8s) and
//! `KUBE_TEST_WARM_UP_IN` (how long after its creation an event's warm-up begins, default 20s).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use coupon_operator::backend::Backend;
use coupon_operator::controller::Settings;
use coupon_operator::crd::{CouponEvent, CouponEventSpec, OnDelete, Phase, Schedule, Workload};
use coupon_operator::leader::{LeaderElection, LeadershipError};
use coupon_operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::task::JoinHandle;

use super::{NamespacedCluster, Recorded};
use crate::{kafka, kafka_brokers, redis_url, unique, wait_until, InProcessApi};

/// A duration from the environment (e.g. `8s`), else `default`.
pub fn parameter(name: &str, default: Duration) -> Duration {
    std::env::var(name).ok().map(|v| coupon_core::time::parse_duration(&v).unwrap_or_else(|e| panic!("{name}={v}: {e}"))).unwrap_or(default)
}

pub fn lease() -> Duration {
    parameter("KUBE_TEST_LEASE", Duration::from_secs(8))
}

/// How long before its Lease could expire a leader whose renewals fail stops acting.
pub fn renew_margin() -> Duration {
    lease() * 3 / 8
}

/// A Deployment the operator may scale. Its Pods are never bound (a node selector no node
/// has): the tests that need processes start their own.
pub fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"coupons.fcfs.dev/scalable": "true"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"nodeSelector": {"coupons.fcfs.dev/node": "none"},
                                       "containers": [{"name": "app", "image": "coupon-tests/never-run:0"}]}}}
    }))
    .unwrap()
}

pub async fn cluster() -> NamespacedCluster {
    let cluster = NamespacedCluster::new("loop").await;
    cluster.create(&deployment("coupon-api", 1)).await;
    cluster.create(&deployment("coupon-consumer", 0)).await;
    cluster
}

/// An event of `limit` coupons on its own topic, open `from`..`to` from now.
pub fn coupon_event(cluster: &NamespacedCluster, limit: i64, from: SignedDuration, to: SignedDuration) -> CouponEvent {
    let name = unique("loop");
    let now = Timestamp::now();
    let spec = CouponEventSpec {
        event_id: None,
        exclusive_topic: false,
        limit,
        per_user_limit: 1,
        topic: format!("op.{name}"),
        partitions: 1,
        shards: 1,
        schedule: Schedule {
            start: Some(Time(now + from)),
            end: Some(Time(now + to)),
            recurrence: None,
            warm_up: Some("1m".into()),
            cool_down: Some("0s".into()),
        },
        api: Workload { deployment: "coupon-api".into(), replicas: 3, idle_replicas: Some(1) },
        consumer: Workload { deployment: "coupon-consumer".into(), replicas: 2, idle_replicas: Some(0) },
        on_delete: OnDelete::Delete,
        paused: false,
        ttl_after_finished: None,
    };
    let mut event = CouponEvent::new(&name, spec);
    event.metadata.namespace = Some(cluster.namespace.clone());
    event
}

/// One operator instance, as `coupon-operator run` starts it.
pub struct Operator {
    pub name: String,
    pub task: JoinHandle<Result<(), LeadershipError>>,
    /// True while it acts as the leader.
    pub leading: Arc<AtomicBool>,
    /// Its readiness (`/readyz`): true once it can list CouponEvents, leading or not.
    pub ready: Arc<AtomicBool>,
    /// Its metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
}

pub async fn start_operator(cluster: &NamespacedCluster, name: &str) -> Operator {
    start_operator_on(cluster, name, &redis_url()).await
}

/// An operator instance with a Redis of its own (another release's).
pub async fn start_operator_on(cluster: &NamespacedCluster, name: &str, redis_url: &str) -> Operator {
    start_operator_with(cluster, name, redis_url, &kafka_brokers()).await
}

/// An operator instance with its own Kafka brokers.
pub async fn start_operator_with_kafka(cluster: &NamespacedCluster, name: &str, brokers: &str) -> Operator {
    start_operator_with(cluster, name, &redis_url(), brokers).await
}

async fn start_operator_with(cluster: &NamespacedCluster, name: &str, redis_url: &str, brokers: &str) -> Operator {
    start_operator_for(cluster, name, redis_url, brokers, Duration::ZERO, own_namespace(cluster)).await
}

/// An operator instance that creates topics of at most `max_partitions_total` partitions in
/// all (`MAX_PARTITIONS_TOTAL`).
pub async fn start_operator_capped(cluster: &NamespacedCluster, name: &str, max_partitions_total: i64) -> Operator {
    let settings = Settings { max_partitions_total: Some(max_partitions_total), ..own_namespace(cluster) };
    start_operator_for(cluster, name, &redis_url(), &kafka_brokers(), Duration::ZERO, settings).await
}

/// An operator instance whose every request to the API server takes `latency` longer.
pub async fn start_operator_slowed(cluster: &NamespacedCluster, name: &str, latency: Duration) -> Operator {
    start_operator_for(cluster, name, &redis_url(), &kafka_brokers(), latency, own_namespace(cluster)).await
}

/// An operator instance living in `home` (its ServiceAccount, its Lease) that manages the
/// CouponEvents of `watched`, as a release's operator manages another namespace's.
pub async fn start_operator_watching(home: &NamespacedCluster, watched: &NamespacedCluster, name: &str) -> Operator {
    home.cluster.bind_operator_rules(&watched.namespace, &home.namespace, name).await;
    start_operator_for(home, name, &redis_url(), &kafka_brokers(), Duration::ZERO, own_namespace(watched)).await
}

/// An operator instance living in `home` that watches every namespace and acts on the
/// CouponEvents of those whose labels match `selector` (`NAMESPACE_SELECTOR`), bound to the
/// chart's cluster-wide rules as a release with `operator.watchAllNamespaces` is.
pub async fn start_operator_selecting(home: &NamespacedCluster, name: &str, selector: &str) -> Operator {
    home.cluster.bind_operator_rules_cluster_wide(&home.namespace, name).await;
    let settings = Settings { namespace: None, namespace_selector: Some(selector.into()), ..Settings::watching(None) };
    start_operator_for(home, name, &redis_url(), &kafka_brokers(), Duration::ZERO, settings).await
}

/// The settings of an operator that manages `cluster`'s namespace.
fn own_namespace(cluster: &NamespacedCluster) -> Settings {
    Settings::watching(Some(cluster.namespace.clone()))
}

/// Starts an instance as the ServiceAccount `name` of `cluster`'s namespace (bound to the
/// rules it needs by the caller), in the election of that namespace's Lease.
async fn start_operator_for(
    cluster: &NamespacedCluster,
    name: &str,
    redis_url: &str,
    brokers: &str,
    latency: Duration,
    settings: Settings,
) -> Operator {
    crate::init_logging();
    let client = cluster.client_with_latency(name, latency).await;
    let backend = Backend::new(redis_url, &kafka(brokers), 1).unwrap();
    let election = LeaderElection {
        namespace: cluster.namespace.clone(),
        lease_name: "coupon-operator".into(),
        identity: name.into(),
        lease_duration: lease(),
        renew_margin: renew_margin(),
        leading: Default::default(),
    };
    let leading = election.leading.clone();
    let ready = Arc::new(AtomicBool::new(false));
    let (backend, metrics, readiness) = (Arc::new(backend), Arc::new(Metrics::default()), ready.clone());
    let exported = metrics.clone();
    tokio::spawn(coupon_operator::readiness::wait_until_listable(client.clone(), settings.namespace.clone(), ready.clone()));
    let controller_client = client.clone();
    let controller = move || {
        coupon_operator::controller::run(controller_client.clone(), backend.clone(), metrics.clone(), readiness.clone(), settings.clone())
    };
    // A standby is ended by aborting its task (as a killed process is).
    let task = tokio::spawn(async move { election.run(client, controller, std::future::pending()).await });
    Operator { name: name.into(), task, leading, ready, metrics: exported }
}

impl Operator {
    /// As if the process died: its connections to the API server are cut, nothing is
    /// released.
    pub fn kill(self, cluster: &NamespacedCluster) {
        cluster.cut(&self.name);
        self.task.abort();
    }
}

/// What the server refused of the operators' requests: RBAC (a call the chart does not
/// grant) and validation of the Events they emit. Every test ends with none.
pub fn assert_nothing_refused(cluster: &NamespacedCluster) {
    let requests = cluster.requests();
    assert!(!requests.is_empty(), "the audit log holds no request of the operators: the checks would look at nothing");
    let refused: Vec<_> = requests
        .into_iter()
        // Refusals are 4xx; a 504 is a request cut off (an operator killed mid-call), never a
        // refusal.
        .filter(|r| r.code == 403 || (r.resource == "events" && (400..500).contains(&r.code)) || r.code == 422)
        .map(|r| format!("{} {} {} -> {}", r.client, r.verb, r.path, r.code))
        .collect();
    assert!(refused.is_empty(), "the API server refused: {refused:#?}");
}

pub async fn lease_holder(cluster: &NamespacedCluster) -> Option<String> {
    cluster.get::<Lease>("coupon-operator").await.and_then(|l| l.spec?.holder_identity)
}

pub async fn wait_for_leader(cluster: &NamespacedCluster, identity: &str, timeout: Duration) {
    wait_until(&format!("{identity} leads"), timeout, || async move {
        (lease_holder(cluster).await.as_deref() == Some(identity)).then_some(())
    })
    .await;
}

/// Waits until the CouponEvent `name` is gone from the cluster (its finalizer removed).
pub async fn wait_until_gone(cluster: &NamespacedCluster, what: &str, name: &str, timeout: Duration) {
    wait_until(what, timeout, || async move { cluster.get::<CouponEvent>(name).await.is_none().then_some(()) }).await;
}

pub fn status_writes<'a>(requests: &'a [Recorded], event: &str) -> impl Iterator<Item = &'a Recorded> + 'a {
    let path = format!("/couponevents/{event}/status");
    requests.iter().filter(move |r| r.method == "PATCH" && r.path.ends_with(&path))
}

pub fn scale_writes(requests: &[Recorded]) -> Vec<&Recorded> {
    requests.iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/scale")).collect()
}

pub async fn wait_for_phase(cluster: &NamespacedCluster, name: &str, phase: Phase) -> CouponEvent {
    wait_for_phase_within(cluster, name, phase, Duration::from_secs(30)).await
}

pub async fn wait_for_phase_within(cluster: &NamespacedCluster, name: &str, phase: Phase, timeout: Duration) -> CouponEvent {
    wait_until(&format!("{name} {phase:?}"), timeout, || async move {
        cluster.get::<CouponEvent>(name).await.filter(|e| e.status.as_ref().is_some_and(|s| s.phase == phase))
    })
    .await
}

pub fn condition(event: &CouponEvent, type_: &str) -> Option<(String, String)> {
    let condition = event.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((condition.status.clone(), condition.reason.clone()))
}

pub async fn wait_for_condition(cluster: &NamespacedCluster, name: &str, type_: &str, status: &str, reason: &str) -> CouponEvent {
    wait_for_condition_within(cluster, name, type_, status, reason, Duration::from_secs(30)).await
}

pub async fn wait_for_condition_within(
    cluster: &NamespacedCluster,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> CouponEvent {
    wait_until(&format!("{name} {type_}={status} ({reason})"), timeout, || async move {
        cluster.get::<CouponEvent>(name).await.filter(|e| condition(e, type_) == Some((status.to_owned(), reason.to_owned())))
    })
    .await
}

/// Warning Events of `reason` the operator emitted (the server accepted) in the namespace.
pub async fn warnings(cluster: &NamespacedCluster, reason: &str) -> usize {
    cluster
        .list::<k8s_openapi::api::events::v1::Event>()
        .await
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .count()
}

/// Applies for `users` and returns the slots of the 201s.
pub async fn apply_all(api: &InProcessApi, namespace: &str, name: &str, users: impl IntoIterator<Item = String>) -> Vec<i64> {
    let id = coupon_core::event::EventId::new(namespace, name).unwrap();
    let http = reqwest::Client::new();
    let mut slots = Vec::new();
    for user in users {
        let response = http.post(api.apply_url(&id)).json(&json!({ "userId": user })).send().await.unwrap();
        if response.status() == 201 {
            slots.push(response.json::<serde_json::Value>().await.unwrap()["slot"].as_i64().unwrap());
        }
    }
    slots.sort();
    slots
}

pub fn key_of(event: &CouponEvent) -> String {
    if let Some(event_id) = &event.spec.event_id {
        return format!("{}/{event_id}", event.metadata.namespace.as_deref().unwrap());
    }
    format!(
        "{}/{}@{}",
        event.metadata.namespace.as_deref().unwrap(),
        event.metadata.name.as_deref().unwrap(),
        event.metadata.uid.as_deref().unwrap()
    )
}
