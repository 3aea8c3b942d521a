//! The real operator, as `coupon-operator run` runs it (kube-runtime controller behind leader
//! election), against the fake API server over HTTP and the real Redis and Kafka broker: what
//! only a running loop shows. Write rates are counted at the fake server, per client.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_operator::backend::Backend;
use coupon_operator::crd::{CouponEvent, CouponEventSpec, OnDelete, Phase, Schedule, Workload};
use coupon_operator::leader::{LeaderElection, LeadershipError};
use coupon_operator::metrics::Metrics;
use coupon_tests::kube_fake::{FakeCluster, Recorded};
use coupon_tests::{kafka, kafka_brokers, redis_url, unique, wait_until, InProcessApi};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::task::JoinHandle;

const NS: &str = "shop";
const LEASE: Duration = Duration::from_secs(8);
/// How long before the Lease expires its holder renews it.
const RENEW_MARGIN: Duration = Duration::from_secs(3);

/// A Deployment the operator may scale.
fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"coupons.fcfs.dev/scalable": "true"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}}}
    }))
    .unwrap()
}

fn cluster() -> FakeCluster {
    let cluster = FakeCluster::new();
    cluster.create(&deployment("coupon-api", 1));
    cluster.create(&deployment("coupon-consumer", 0));
    cluster
}

/// An event of `limit` coupons on its own topic, open `from`..`to` from now.
fn coupon_event(limit: i64, from: SignedDuration, to: SignedDuration) -> CouponEvent {
    let name = unique("loop");
    let now = Timestamp::now();
    let spec = CouponEventSpec {
        limit,
        per_user_limit: 1,
        topic: format!("op.{name}"),
        partitions: 1,
        shards: 1,
        schedule: Schedule { start: Time(now + from), end: Time(now + to), warm_up: Some("1m".into()) },
        api: Workload { deployment: "coupon-api".into(), replicas: 3, idle_replicas: Some(1) },
        consumer: Workload { deployment: "coupon-consumer".into(), replicas: 2, idle_replicas: Some(0) },
        on_delete: OnDelete::Delete,
        paused: false,
    };
    let mut event = CouponEvent::new(&name, spec);
    event.metadata.namespace = Some(NS.into());
    event
}

/// One operator instance, as `coupon-operator run` starts it.
struct Operator {
    name: String,
    task: JoinHandle<Result<(), LeadershipError>>,
    /// True while it acts as the leader.
    leading: Arc<AtomicBool>,
}

async fn start_operator(cluster: &FakeCluster, name: &str) -> Operator {
    coupon_tests::init_logging();
    let client = cluster.client(name).await;
    let backend = Backend::new(redis_url(), &kafka(&kafka_brokers()), 1).unwrap();
    let election = LeaderElection {
        namespace: NS.into(),
        lease_name: "coupon-operator".into(),
        identity: name.into(),
        lease_duration: LEASE,
        renew_margin: RENEW_MARGIN,
        leading: Default::default(),
    };
    let leading = election.leading.clone();
    let controller = coupon_operator::controller::run(
        client.clone(),
        backend,
        Arc::new(Metrics::default()),
        Some(NS.into()),
        Arc::new(AtomicBool::new(false)),
    );
    let task = tokio::spawn(async move { election.run(client, controller).await });
    Operator { name: name.into(), task, leading }
}

impl Operator {
    /// As if the process died: nothing more reaches the API server, nothing is released.
    fn kill(self, cluster: &FakeCluster) {
        cluster.cut(&self.name);
        self.task.abort();
    }
}

fn lease_holder(cluster: &FakeCluster) -> Option<String> {
    cluster.get::<Lease>(NS, "coupon-operator").and_then(|l| l.spec?.holder_identity)
}

async fn wait_for_leader(cluster: &FakeCluster, identity: &str, timeout: Duration) {
    wait_until(&format!("{identity} leads"), timeout, || {
        let holder = lease_holder(cluster);
        async move { (holder.as_deref() == Some(identity)).then_some(()) }
    })
    .await;
}

/// Waits until the CouponEvent `name` is gone from the cluster (its finalizer removed).
async fn wait_until_gone(cluster: &FakeCluster, what: &str, name: &str, timeout: Duration) {
    wait_until(what, timeout, || {
        let gone = cluster.get::<CouponEvent>(NS, name).is_none();
        async move { gone.then_some(()) }
    })
    .await;
}

fn status_writes<'a>(requests: &'a [Recorded], event: &str) -> impl Iterator<Item = &'a Recorded> + 'a {
    let path = format!("/couponevents/{event}/status");
    requests.iter().filter(move |r| r.method == "PATCH" && r.path.ends_with(&path))
}

fn scale_writes(requests: &[Recorded]) -> Vec<&Recorded> {
    requests.iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/scale")).collect()
}

async fn wait_for_phase(cluster: &FakeCluster, name: &str, phase: Phase) -> CouponEvent {
    wait_until(&format!("{name} {phase:?}"), Duration::from_secs(30), || {
        let event = cluster.get::<CouponEvent>(NS, name).filter(|e| e.status.as_ref().is_some_and(|s| s.phase == phase));
        async move { event }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_steady_load_status_writes_are_bounded_and_nothing_is_scaled_after_the_warm_up() {
    let cluster = cluster();
    let operator = start_operator(&cluster, "operator-0").await;
    let event = cluster.create(&coupon_event(100_000, SignedDuration::from_secs(2), SignedDuration::from_secs(120)));
    let name = event.metadata.name.clone().unwrap();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    assert_eq!(cluster.replicas(NS, "coupon-api"), Some(3));
    assert_eq!(cluster.replicas(NS, "coupon-consumer"), Some(2));

    let api = InProcessApi::start(NS, &kafka_brokers()).await;
    let id = coupon_core::event::EventId::new(NS, &name).unwrap();
    let url = api.apply_url(&id);
    let load_started = Instant::now();
    let load = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut issued = 0u64;
        let mut n = 0u64;
        while load_started.elapsed() < Duration::from_secs(30) {
            n += 1;
            let response = http.post(&url).json(&json!({ "userId": format!("user-{n}") })).send().await.unwrap();
            issued += u64::from(response.status() == 201);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        issued
    });
    let issued = load.await.unwrap();
    let load_ended = Instant::now();
    assert!(issued > 500, "the load issued only {issued} coupons");

    let requests = cluster.requests();
    let during = |r: &&Recorded| r.at >= load_started && r.at <= load_ended;
    let writes: Vec<_> = status_writes(&requests, &name).filter(during).collect();
    let seconds = (load_ended - load_started).as_secs_f64();
    println!("{} status writes in {seconds:.1} s under {issued} issued coupons", writes.len());
    assert!(writes.len() as f64 <= seconds / 2.0 + 1.0, "{} status writes in {seconds:.1} s", writes.len());
    assert!(writes.len() >= 3, "the status must follow the counters: {} writes", writes.len());
    let scaled: Vec<_> = scale_writes(&requests).into_iter().filter(during).map(|r| r.path.clone()).collect();
    assert!(scaled.is_empty(), "scale writes under load: {scaled:?}");
    // The status catches up with what was issued.
    wait_until("status.issued", Duration::from_secs(15), || {
        let seen = cluster.get::<CouponEvent>(NS, &name).and_then(|e| e.status).map(|s| s.issued);
        async move { (seen == Some(issued as i64)).then_some(()) }
    })
    .await;
    // A healthy leader stayed the leader across the renewals of all this time.
    assert!(operator.leading.load(std::sync::atomic::Ordering::SeqCst) && !operator.task.is_finished(), "the leader stepped down");
    operator.kill(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operators_exactly_one_writes_and_a_killed_leader_hands_over_within_the_lease() {
    let cluster = cluster();
    let first = start_operator(&cluster, "operator-a").await;
    wait_for_leader(&cluster, "operator-a", Duration::from_secs(15)).await;
    let second = start_operator(&cluster, "operator-b").await;
    let event = cluster.create(&coupon_event(10, SignedDuration::from_hours(1), SignedDuration::from_hours(2)));
    let name = event.metadata.name.clone().unwrap();
    wait_for_phase(&cluster, &name, Phase::Scheduled).await;
    // Long enough for the second instance to have acted if it were going to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let is_effect = |r: &&Recorded| r.is_write() && !r.path.contains("/leases");
    let writers: std::collections::BTreeSet<_> = cluster.requests().iter().filter(is_effect).map(|r| r.client.clone()).collect();
    assert_eq!(writers, ["operator-a".to_owned()].into(), "only the leader writes");

    let killed = Instant::now();
    first.kill(&cluster);
    // An edit made right after the leader died is acted on by the next one.
    cluster.patch::<CouponEvent>(NS, &name, json!({ "spec": { "limit": 20 } }));
    wait_for_leader(&cluster, "operator-b", LEASE + Duration::from_secs(5)).await;
    let handed_over = killed.elapsed();
    wait_until("the edit is acted on", Duration::from_secs(10), || {
        let limit = cluster.get::<CouponEvent>(NS, &name).and_then(|e| e.status?.last_accepted_spec).map(|s| s.limit);
        async move { (limit == Some(20)).then_some(()) }
    })
    .await;
    println!("hand-over {handed_over:?} after the leader died (lease {LEASE:?})");
    // The lease's duration, plus the up to 1 s of jitter the lease manager adds before
    // taking an expired lease so that two candidates do not collide.
    assert!(handed_over <= LEASE + Duration::from_millis(1500), "hand-over took {handed_over:?}");
    let late: Vec<_> = cluster.requests().iter().filter(|r| r.at > killed && r.client == "operator-a").map(|r| r.path.clone()).collect();
    assert!(late.iter().all(|p| p.contains("/leases")), "the dead leader had effects: {late:?}");
    second.kill(&cluster);
}

fn condition(event: &CouponEvent, type_: &str) -> Option<(String, String)> {
    let condition = event.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((condition.status.clone(), condition.reason.clone()))
}

async fn wait_for_condition(cluster: &FakeCluster, name: &str, type_: &str, status: &str, reason: &str) -> CouponEvent {
    wait_until(&format!("{name} {type_}={status} ({reason})"), Duration::from_secs(30), || {
        let event = cluster.get::<CouponEvent>(NS, name).filter(|e| condition(e, type_) == Some((status.to_owned(), reason.to_owned())));
        async move { event }
    })
    .await
}

fn warnings(cluster: &FakeCluster, reason: &str) -> usize {
    cluster
        .list::<k8s_openapi::api::events::v1::Event>(NS)
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_that_did_not_opt_in_or_have_an_autoscaler_are_left_alone_and_reported() {
    let cluster = FakeCluster::new();
    let mut unlabelled = deployment("coupon-api", 1);
    unlabelled.metadata.labels = None;
    cluster.create(&unlabelled);
    cluster.create(&deployment("coupon-consumer", 0));
    let hpa: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "keda-hpa-consumer", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "coupon-consumer"}, "maxReplicas": 5}
    }))
    .unwrap();
    cluster.create(&hpa);
    let operator = start_operator(&cluster, "operator-0").await;
    let event = cluster.create(&coupon_event(10, SignedDuration::from_secs(-1), SignedDuration::from_secs(60)));
    let name = event.metadata.name.clone().unwrap();
    let event = wait_for_condition(&cluster, &name, "Scaling", "False", "Autoscaled").await;
    assert_eq!(event.status.as_ref().unwrap().phase, Phase::Open);
    assert_eq!(condition(&event, "Ready").unwrap().0, "True", "the sale itself is in place");
    assert!(scale_writes(&cluster.requests()).is_empty(), "nothing scaled");
    assert_eq!((cluster.replicas(NS, "coupon-api"), cluster.replicas(NS, "coupon-consumer")), (Some(1), Some(0)));
    assert_eq!(warnings(&cluster, "Autoscaled"), 1);
    assert_eq!(warnings(&cluster, "NotOptedIn"), 1);
    let message = &event.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Scaling").unwrap().message;
    assert!(message.contains("keda-hpa-consumer"), "{message}");

    // Removing the autoscaler leaves the label missing on the api: reported as such.
    cluster.delete::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>(NS, "keda-hpa-consumer");
    cluster.patch::<CouponEvent>(NS, &name, json!({ "spec": { "limit": 11 } }));
    wait_for_condition(&cluster, &name, "Scaling", "False", "NotOptedIn").await;
    wait_until("consumer scaled", Duration::from_secs(10), || {
        let replicas = cluster.replicas(NS, "coupon-consumer");
        async move { (replicas == Some(2)).then_some(()) }
    })
    .await;
    assert_eq!(cluster.replicas(NS, "coupon-api"), Some(1), "the api that did not opt in keeps its scale");
    operator.kill(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_mid_window_scales_nothing_and_says_why() {
    let cluster = cluster();
    let operator = start_operator(&cluster, "operator-0").await;
    let event = cluster.create(&coupon_event(100, SignedDuration::from_secs(-1), SignedDuration::from_secs(120)));
    let name = event.metadata.name.clone().unwrap();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    let api = InProcessApi::start(NS, &kafka_brokers()).await;
    let id = coupon_core::event::EventId::new(NS, &name).unwrap();
    let http = reqwest::Client::new();
    for user in ["u1", "u2", "u3"] {
        let response = http.post(api.apply_url(&id)).json(&json!({ "userId": user })).send().await.unwrap();
        assert_eq!(response.status(), 201);
    }
    let edited = Instant::now();
    cluster.patch::<CouponEvent>(NS, &name, json!({ "spec": { "limit": 2, "api": { "replicas": 1 } } }));
    let event = wait_for_condition(&cluster, &name, "Ready", "False", "LimitBelowIssued").await;
    assert_eq!(event.status.as_ref().unwrap().phase, Phase::Open, "the accepted spec stays in effect");
    let late_scales: Vec<_> = scale_writes(&cluster.requests()).into_iter().filter(|r| r.at > edited).map(|r| r.body.clone()).collect();
    assert!(late_scales.is_empty(), "a refused edit scaled: {late_scales:?}");
    assert_eq!(cluster.replicas(NS, "coupon-api"), Some(3));
    let response = http.post(api.apply_url(&id)).json(&json!({ "userId": "u4" })).send().await.unwrap();
    assert_eq!(response.status(), 201, "the sale goes on under the accepted limit");
    assert_eq!(warnings(&cluster, "LimitBelowIssued"), 1);
    operator.kill(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_stops_issuing_within_a_second_and_resuming_keeps_the_counters() {
    let cluster = cluster();
    let operator = start_operator(&cluster, "operator-0").await;
    let event = cluster.create(&coupon_event(100, SignedDuration::from_secs(-1), SignedDuration::from_secs(120)));
    let name = event.metadata.name.clone().unwrap();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    let api = InProcessApi::start(NS, &kafka_brokers()).await;
    let id = coupon_core::event::EventId::new(NS, &name).unwrap();
    let http = reqwest::Client::new();
    let apply = |user: String| {
        let request = http.post(api.apply_url(&id)).json(&json!({ "userId": user }));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    assert_eq!(apply("before".into()).await.0, 201);
    let paused_at = Instant::now();
    cluster.patch::<CouponEvent>(NS, &name, json!({ "spec": { "paused": true } }));
    let mut n = 0;
    let stopped = loop {
        n += 1;
        let (status, body) = apply(format!("while-{n}")).await;
        if status == 403 && body["status"] == "paused" {
            break paused_at.elapsed();
        }
        assert!(paused_at.elapsed() < Duration::from_secs(5), "still issuing after {:?}", paused_at.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("paused after {stopped:?}");
    assert!(stopped <= Duration::from_secs(1), "issuing stopped only after {stopped:?}");
    wait_for_condition(&cluster, &name, "Ready", "False", "Paused").await;
    let issued_while_pausing = (n - 1) as i64;
    assert_eq!(cluster.replicas(NS, "coupon-api"), Some(3), "a paused sale keeps its pods");

    cluster.patch::<CouponEvent>(NS, &name, json!({ "spec": { "paused": false } }));
    let (status, body) = wait_until("resumed", Duration::from_secs(5), || {
        let next = apply("after".into());
        async move {
            let (status, body) = next.await;
            (status == 201).then_some((status, body))
        }
    })
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["slot"], json!(2 + issued_while_pausing), "resuming continues the same counters");
    operator.kill(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_makes_the_event_unready_with_the_reason() {
    let cluster = cluster();
    coupon_tests::init_logging();
    let client = cluster.client("operator-0").await;
    // Nothing listens on port 1.
    let backend = Backend::new("redis://127.0.0.1:1", &kafka(&kafka_brokers()), 1).unwrap();
    let controller =
        coupon_operator::controller::run(client, backend, Arc::new(Metrics::default()), Some(NS.into()), Arc::new(AtomicBool::new(false)));
    let task = tokio::spawn(controller);
    let event = cluster.create(&coupon_event(10, SignedDuration::from_secs(-1), SignedDuration::from_secs(60)));
    let name = event.metadata.name.clone().unwrap();
    let event = wait_for_condition(&cluster, &name, "Ready", "False", "BackendUnavailable").await;
    let message = event.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(message.contains("Redis"), "{message}");
    assert!(scale_writes(&cluster.requests()).is_empty(), "nothing scaled for an event that is not in place");
    // One status write for the outage, not one per retry.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(status_writes(&cluster.requests(), &name).count(), 1);
    task.abort();
}

/// Applies for `users` and returns the slots of the 201s.
async fn apply_all(api: &InProcessApi, name: &str, users: impl IntoIterator<Item = String>) -> Vec<i64> {
    let id = coupon_core::event::EventId::new(NS, name).unwrap();
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

fn key_of(event: &CouponEvent) -> String {
    format!("{NS}/{}@{}", event.metadata.name.as_deref().unwrap(), event.metadata.uid.as_deref().unwrap())
}

/// The same name, deleted and created again (as next year's sale would be): a new event.
async fn a_re_created_name_is_a_new_event(on_delete: OnDelete) {
    let cluster = cluster();
    let operator = start_operator(&cluster, "operator-0").await;
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let mut first = coupon_event(5, SignedDuration::from_secs(-1), SignedDuration::from_secs(120));
    first.spec.on_delete = on_delete;
    // The topic exists before the event, so `onDelete: Delete` keeps it (only a topic the
    // operator created is deleted). Deleting it under the running consumer would crash the
    // consumer: tansu answers metadata of a deleted topic with a null topic name, on which
    // librdkafka segfaults (rd_kafka_metadata_update_op); Kafka answers UNKNOWN_TOPIC.
    let admin = kafka(&kafka_brokers()).admin().unwrap();
    admin.ensure_topic(&first.spec.topic, 1, 1).await.unwrap();
    let first = cluster.create(&first);
    let name = first.metadata.name.clone().unwrap();
    let topic = first.spec.topic.clone();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    let consumer = coupon_tests::InProcessConsumer::start(&database, &[topic.as_str()], &kafka_brokers());
    let api = InProcessApi::start(NS, &kafka_brokers()).await;
    let users = || (1..=8).map(|u| format!("user-{u}"));
    assert_eq!(apply_all(&api, &name, users()).await, vec![1, 2, 3, 4, 5]);
    coupon_tests::wait_for_rows(&store, &key_of(&first), 5, Duration::from_secs(30)).await;
    wait_for_phase(&cluster, &name, Phase::SoldOut).await;

    cluster.delete::<CouponEvent>(NS, &name);
    wait_until_gone(&cluster, "the first object is gone", &name, Duration::from_secs(30)).await;
    let mut second = coupon_event(5, SignedDuration::from_secs(-1), SignedDuration::from_secs(120));
    second.metadata.name = Some(name.clone());
    second.spec.topic = topic.clone();
    second.spec.on_delete = on_delete;
    let second = cluster.create(&second);
    assert_ne!(second.metadata.uid, first.metadata.uid);
    let status = wait_for_phase(&cluster, &name, Phase::Open).await.status.unwrap();
    assert_eq!(status.issued, 0, "the new object starts from zero");
    // The same users get coupons of the new event, its full limit.
    let slots = wait_until("the new event issues", Duration::from_secs(10), || {
        let apply = apply_all(&api, &name, users());
        async move { Some(apply.await).filter(|s| !s.is_empty()) }
    })
    .await;
    assert_eq!(slots, vec![1, 2, 3, 4, 5]);
    coupon_tests::wait_for_rows(&store, &key_of(&second), 5, Duration::from_secs(30)).await;
    assert_eq!(store.count_coupons(&key_of(&first)).await.unwrap(), 5, "the old coupons stay readable");
    assert!(store.failed_events(&topic).await.unwrap().is_empty(), "nothing failed");
    consumer.stop().await.unwrap();
    operator.kill(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_name_with_retain_is_a_new_event_with_its_own_limit() {
    a_re_created_name_is_a_new_event(OnDelete::Retain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_name_with_delete_is_a_new_event_with_its_own_limit() {
    a_re_created_name_is_a_new_event(OnDelete::Delete).await;
}

/// Stands in for the kubelet: one real `coupon-service` process per Deployment scaled above
/// zero (one pod stands for all replicas), stopped with SIGTERM when scaled to zero. Records
/// every start and stop.
struct Kubelet {
    task: JoinHandle<()>,
    transitions: Arc<std::sync::Mutex<Vec<(String, bool)>>>,
}

impl Kubelet {
    fn start(cluster: &FakeCluster, pods: Vec<(&'static str, Vec<(String, String)>)>) -> Self {
        let transitions: Arc<std::sync::Mutex<Vec<(String, bool)>>> = Arc::default();
        let (cluster, seen) = (cluster.clone(), transitions.clone());
        let task = tokio::spawn(async move {
            let binary = std::path::Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
            let mut running: std::collections::HashMap<&str, coupon_tests::ChildProcess> = Default::default();
            loop {
                for (deployment, env) in &pods {
                    let wanted = cluster.replicas(NS, deployment).unwrap_or(0) > 0;
                    let command = if *deployment == "coupon-api" { "api" } else { "consumer" };
                    match (wanted, running.contains_key(deployment)) {
                        (true, false) => {
                            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                            running.insert(deployment, coupon_tests::ChildProcess::spawn(binary, &[command], &env));
                            seen.lock().unwrap().push((deployment.to_string(), true));
                        }
                        (false, true) => {
                            let mut process = running.remove(deployment).unwrap();
                            let pid = process.child.id().unwrap().to_string();
                            let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
                            let _ = tokio::time::timeout(Duration::from_secs(20), process.child.wait()).await;
                            seen.lock().unwrap().push((deployment.to_string(), false));
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { task, transitions }
    }

    fn transitions(&self) -> Vec<(String, bool)> {
        self.transitions.lock().unwrap().clone()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        // Dropping the task's processes kills them.
        self.task.abort();
    }
}

/// Replica counts each scale write set, per Deployment, in order.
fn scale_history(cluster: &FakeCluster, deployment: &str) -> Vec<i64> {
    let path = format!("/deployments/{deployment}/scale");
    cluster
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with(&path))
        .filter_map(|r| r.body["spec"]["replicas"].as_i64())
        .collect()
}

async fn apply_concurrently(url: &str, users: Vec<String>) -> Vec<(u16, serde_json::Value)> {
    let http = reqwest::Client::new();
    let requests = users.into_iter().map(|user| {
        let request = http.post(url).json(&json!({ "userId": user }));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    });
    futures::future::join_all(requests).await
}

/// The whole life of two overlapping events on one shared topic, with real api and consumer
/// processes started and stopped as the operator scales their Deployments: applied, warmed
/// up, open, a crowd, one event deleted (`onDelete: Delete`) mid-way, the other sold out
/// (410 still answered by running pods), closed, drained, scaled down, deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_life_of_two_events_on_one_topic_with_one_deleted_mid_way() {
    let cluster = cluster();
    cluster.patch::<Deployment>(NS, "coupon-api", json!({ "spec": { "replicas": 0 } }));
    let database = coupon_tests::postgres_url();
    let store = coupon_tests::migrated_store(&database).await;
    let topic = unique("life");
    let (api_port, consumer_port) = (coupon_tests::free_port(), coupon_tests::free_port());
    let common = [("REDIS_URL".to_owned(), redis_url()), ("KAFKA_BROKERS".to_owned(), kafka_brokers())];
    let api_env: Vec<(String, String)> = common
        .iter()
        .cloned()
        .chain([
            ("LISTEN_ADDR".into(), format!("127.0.0.1:{api_port}")),
            ("COUPON_NAMESPACE".into(), NS.into()),
            ("SHUTDOWN_DELAY".into(), "1s".into()),
        ])
        .collect();
    let consumer_env: Vec<(String, String)> = common
        .iter()
        .cloned()
        .chain([
            ("LISTEN_ADDR".into(), format!("127.0.0.1:{consumer_port}")),
            ("DATABASE_URL".into(), database.clone()),
            // Only the shared topic, without EVENT_NAMESPACE: the Redis all tests share lists
            // other tests' (and earlier runs') events of this namespace, whose topics may be
            // gone, and tansu answers metadata of a missing topic with a null name, on which
            // librdkafka crashes. Following new topics is tested on its own (apply_path).
            ("COUPON_TOPICS".into(), topic.clone()),
            ("CONSUMER_GROUP".into(), unique("life-group")),
        ])
        .collect();
    let kubelet = Kubelet::start(&cluster, vec![("coupon-api", api_env), ("coupon-consumer", consumer_env)]);
    let operator = start_operator(&cluster, "operator-0").await;

    // Applied: both open in 10 s, warming up now; `kept` ends first.
    let mut deleted = coupon_event(50, SignedDuration::from_secs(10), SignedDuration::from_secs(60));
    deleted.spec.topic = topic.clone();
    let mut kept = coupon_event(50, SignedDuration::from_secs(10), SignedDuration::from_secs(35));
    kept.spec.topic = topic.clone();
    let (deleted, kept) = (cluster.create(&deleted), cluster.create(&kept));
    let (deleted_name, kept_name) = (deleted.metadata.name.clone().unwrap(), kept.metadata.name.clone().unwrap());
    wait_for_phase(&cluster, &kept_name, Phase::WarmingUp).await;
    let base = format!("http://127.0.0.1:{api_port}");
    // Ready means it answers; the first applies wait until it reaches Redis and Kafka.
    coupon_tests::wait_for_status("api pod ready", &format!("{base}/readyz"), 200, Duration::from_secs(30)).await;
    for component in ["redis", "kafka"] {
        coupon_tests::wait_for_component(&base, component, true, Duration::from_secs(30)).await;
    }
    let kept_url = format!("{base}/v1/events/{kept_name}/apply");
    let deleted_url = format!("{base}/v1/events/{deleted_name}/apply");
    assert_eq!(apply_concurrently(&kept_url, vec!["early".into()]).await[0].0, 403, "not open yet");

    // Open: a crowd on both.
    wait_for_phase(&cluster, &kept_name, Phase::Open).await;
    let users = |prefix: &str, range: std::ops::RangeInclusive<u32>| range.map(|n| format!("{prefix}-{n}")).collect::<Vec<_>>();
    let (first_kept, on_deleted) =
        tokio::join!(apply_concurrently(&kept_url, users("k", 1..=30)), apply_concurrently(&deleted_url, users("d", 1..=20)));
    assert!(first_kept.iter().all(|(status, _)| *status == 201), "{first_kept:?}");
    assert!(on_deleted.iter().all(|(status, _)| *status == 201), "{on_deleted:?}");

    // One event deleted mid-way: the other goes on, on the same topic.
    cluster.delete::<CouponEvent>(NS, &deleted_name);
    wait_until_gone(&cluster, "the deleted event is gone", &deleted_name, Duration::from_secs(30)).await;
    assert_eq!(apply_concurrently(&deleted_url, vec!["d-late".into()]).await[0].0, 404, "a deleted event is unknown");
    let second_kept = apply_concurrently(&kept_url, users("k", 31..=100)).await;
    let issued_after = second_kept.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(issued_after, 20, "the kept event still issues after the other's deletion");
    assert!(second_kept.iter().all(|(status, _)| *status == 201 || *status == 410), "{second_kept:?}");
    let mut slots: Vec<i64> =
        first_kept.iter().chain(&second_kept).filter(|(s, _)| *s == 201).map(|(_, b)| b["slot"].as_i64().unwrap()).collect();
    slots.sort();
    assert_eq!(slots, (1..=50).collect::<Vec<_>>(), "exactly the limit, each slot once");

    // Sold out: the pods stay, and answer 410.
    // (A scale-down at sold out would also show in the exact scale history asserted below.)
    wait_for_phase(&cluster, &kept_name, Phase::SoldOut).await;
    assert_eq!(apply_concurrently(&kept_url, vec!["late".into()]).await[0].0, 410);
    assert_eq!(cluster.replicas(NS, "coupon-api"), Some(3), "sold out keeps the api up");
    let kept_key = format!("{NS}/{kept_name}@{}", kept.metadata.uid.as_deref().unwrap());
    coupon_tests::wait_for_rows(&store, &kept_key, 50, Duration::from_secs(60)).await;

    // Closed, drained, scaled down.
    let closed = wait_until("closed and scaled down", Duration::from_secs(60), || {
        let event = cluster.get::<CouponEvent>(NS, &kept_name);
        let down = cluster.replicas(NS, "coupon-consumer") == Some(0);
        async move { event.filter(|e| e.status.as_ref().is_some_and(|s| s.phase == Phase::Closed) && down) }
    })
    .await;
    let status = closed.status.unwrap();
    assert_eq!((status.issued, status.persisted), (50, 50));
    assert_eq!(cluster.replicas(NS, "coupon-api"), Some(1), "the api keeps its idle replica to answer 403");
    assert_eq!(scale_history(&cluster, "coupon-api"), vec![3, 1], "scaled up at the warm-up and down after the drain, nothing between");
    assert_eq!(scale_history(&cluster, "coupon-consumer"), vec![2, 0]);
    wait_until("consumer pod stopped", Duration::from_secs(30), || {
        let stopped = kubelet.transitions().contains(&("coupon-consumer".to_owned(), false));
        async move { stopped.then_some(()) }
    })
    .await;

    // Deleted: the finalizer ends, the object goes.
    cluster.delete::<CouponEvent>(NS, &kept_name);
    wait_until_gone(&cluster, "the kept event is gone", &kept_name, Duration::from_secs(30)).await;
    assert_eq!(store.count_coupons(&kept_key).await.unwrap(), 50, "its rows stay");
    let failed = store.failed_events(&topic).await.unwrap();
    assert!(failed.iter().all(|f| !String::from_utf8_lossy(&f.payload).contains(&kept_name)), "failed rows of the kept event: {failed:?}");
    operator.kill(&cluster);

    // Everything the running operator called over this whole life is granted by the chart's
    // rules, and its Lease calls are exactly the leader-election rules.
    let used: std::collections::BTreeSet<_> =
        cluster.requests().iter().filter(|r| r.client == "operator-0").map(Recorded::permission).collect();
    let granted = |file: &str| -> std::collections::BTreeSet<(String, String, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/coupon-system/files").join(file);
        let rules: Vec<serde_json::Value> = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut granted = std::collections::BTreeSet::new();
        for rule in &rules {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert((group.as_str().unwrap().into(), resource.as_str().unwrap().into(), verb.as_str().unwrap().into()));
                    }
                }
            }
        }
        granted
    };
    let (events, lease) = (granted("operator-rules.yaml"), granted("operator-leader-election-rules.yaml"));
    let not_granted: Vec<_> = used.iter().filter(|p| !events.contains(*p) && !lease.contains(*p)).collect();
    assert!(not_granted.is_empty(), "calls the chart does not grant: {not_granted:?}");
    let lease_calls: std::collections::BTreeSet<_> = used.into_iter().filter(|(_, resource, _)| resource == "leases").collect();
    assert_eq!(lease_calls, lease, "the leader-election rules are exactly the Lease calls");
}

/// A name re-used while the earlier object's coupons are still on their way to SQL: the new
/// object waits, says why, and starts from zero once they are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_name_waits_for_the_earlier_objects_coupons_to_be_written() {
    let cluster = cluster();
    let operator = start_operator(&cluster, "operator-0").await;
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let first = cluster.create(&coupon_event(5, SignedDuration::from_secs(-1), SignedDuration::from_secs(120)));
    let name = first.metadata.name.clone().unwrap();
    let topic = first.spec.topic.clone();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    let api = InProcessApi::start(NS, &kafka_brokers()).await;
    let users = || (1..=8).map(|u| format!("user-{u}"));
    // No consumer yet: the three coupons stay unwritten.
    assert_eq!(apply_all(&api, &name, users().take(3)).await, vec![1, 2, 3]);
    cluster.patch::<CouponEvent>(NS, &name, json!({ "spec": { "onDelete": "Retain" } }));
    wait_until("Retain accepted", Duration::from_secs(10), || {
        let accepted = cluster.get::<CouponEvent>(NS, &name).and_then(|e| e.status?.last_accepted_spec).map(|s| s.on_delete);
        async move { (accepted == Some(OnDelete::Retain)).then_some(()) }
    })
    .await;
    // Deleting it (`Retain`) closes the sale and keeps the object, with the consumer scaled
    // up, until its coupons are written.
    cluster.delete::<CouponEvent>(NS, &name);
    wait_until("the consumer scaled for the drain", Duration::from_secs(15), || {
        let replicas = (cluster.replicas(NS, "coupon-api"), cluster.replicas(NS, "coupon-consumer"));
        async move { (replicas == (Some(1), Some(2))).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(cluster.get::<CouponEvent>(NS, &name).is_some(), "kept while its coupons are unwritten");
    // Someone removes the finalizer by hand (as users of stuck objects do): the object goes
    // with its coupons still unwritten.
    cluster.patch::<CouponEvent>(NS, &name, json!({ "metadata": { "finalizers": null } }));
    wait_until_gone(&cluster, "the first object is gone", &name, Duration::from_secs(30)).await;

    cluster.patch::<Deployment>(NS, "coupon-consumer", json!({ "spec": { "replicas": 0 } }));
    let mut second = coupon_event(5, SignedDuration::from_secs(-1), SignedDuration::from_secs(120));
    second.metadata.name = Some(name.clone());
    second.spec.topic = topic.clone();
    let second = cluster.create(&second);
    let waiting = wait_for_condition(&cluster, &name, "Ready", "False", "PreviousEventDraining").await;
    assert_eq!(waiting.status.as_ref().unwrap().issued, 0, "the earlier object's counts are not this one's");
    assert_eq!(cluster.replicas(NS, "coupon-consumer"), Some(2), "the consumer is kept up to write the earlier coupons");
    let http = reqwest::Client::new();
    let id = coupon_core::event::EventId::new(NS, &name).unwrap();
    let closed = http.post(api.apply_url(&id)).json(&json!({ "userId": "user-9" })).send().await.unwrap();
    assert_eq!(closed.status(), 403, "the earlier sale is closed and the new one not provisioned yet");

    // The consumer writes the earlier coupons; then the new object starts from zero.
    let consumer = coupon_tests::InProcessConsumer::start(&database, &[topic.as_str()], &kafka_brokers());
    coupon_tests::wait_for_rows(&store, &key_of(&first), 3, Duration::from_secs(30)).await;
    wait_for_condition(&cluster, &name, "Ready", "True", "Provisioned").await;
    let slots = wait_until("the new event issues", Duration::from_secs(10), || {
        let apply = apply_all(&api, &name, users());
        async move { Some(apply.await).filter(|s| !s.is_empty()) }
    })
    .await;
    assert_eq!(slots, vec![1, 2, 3, 4, 5], "its full limit, to the same users too");
    coupon_tests::wait_for_rows(&store, &key_of(&second), 5, Duration::from_secs(30)).await;
    assert_eq!(store.count_coupons(&key_of(&first)).await.unwrap(), 3);
    assert!(store.failed_events(&topic).await.unwrap().is_empty(), "nothing failed");
    consumer.stop().await.unwrap();
    operator.kill(&cluster);
}

/// A leader cut off from the API server (alive, but its renewals fail) stops acting before
/// its Lease can expire, so the next leader is never a second writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down_before_another_takes_over() {
    let cluster = cluster();
    let first = start_operator(&cluster, "operator-a").await;
    wait_for_leader(&cluster, "operator-a", Duration::from_secs(15)).await;
    let second = start_operator(&cluster, "operator-b").await;
    assert!(first.leading.load(std::sync::atomic::Ordering::SeqCst));
    let cut = Instant::now();
    cluster.cut("operator-a");
    // The Lease as the leader last renewed it: it expires at that renewal plus its duration.
    let last_renewal = cluster.get::<Lease>(NS, "coupon-operator").and_then(|l| l.spec?.renew_time).unwrap().0;
    let expires = last_renewal + SignedDuration::try_from(LEASE).unwrap();
    // Both moments, polled side by side: when the old leader stops acting, when the new
    // one holds the Lease.
    let (mut stepped_down, mut taken_over) = (None, None);
    while (stepped_down.is_none() || taken_over.is_none()) && cut.elapsed() < LEASE + Duration::from_secs(5) {
        if stepped_down.is_none() && !first.leading.load(std::sync::atomic::Ordering::SeqCst) {
            stepped_down = Some(cut.elapsed());
            assert!(Timestamp::now() < expires, "stepped down only after the Lease could expire ({expires})");
        }
        if taken_over.is_none() && lease_holder(&cluster).as_deref() == Some("operator-b") {
            taken_over = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (stepped_down, taken_over) = (stepped_down.expect("the cut-off leader stops"), taken_over.expect("operator-b leads"));
    let outcome = tokio::time::timeout(Duration::from_secs(5), first.task).await.expect("the cut-off leader's task ends");
    assert!(matches!(outcome, Ok(Err(LeadershipError::Lost(_)))), "{outcome:?}");
    println!("stepped down {stepped_down:?} and taken over {taken_over:?} after the cut (lease {LEASE:?})");
    assert!(stepped_down < taken_over, "the old leader stopped ({stepped_down:?}) only after the new one led ({taken_over:?})");
    second.kill(&cluster);
}

/// Deleting a `Retain` event closes its sale and keeps it, with its consumer up, until its
/// coupons are written; then it lets go by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_retain_event_closes_waits_for_its_coupons_and_then_lets_go() {
    let cluster = cluster();
    let operator = start_operator(&cluster, "operator-0").await;
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let mut event = coupon_event(5, SignedDuration::from_secs(-1), SignedDuration::from_secs(120));
    event.spec.on_delete = OnDelete::Retain;
    let event = cluster.create(&event);
    let name = event.metadata.name.clone().unwrap();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    let api = InProcessApi::start(NS, &kafka_brokers()).await;
    // No consumer runs: three coupons wait on the topic.
    assert_eq!(apply_all(&api, &name, (1..=3).map(|u| format!("user-{u}"))).await, vec![1, 2, 3]);
    cluster.delete::<CouponEvent>(NS, &name);
    // Applies racing the deletion may still be issued until the sale is closed: each is a
    // coupon the deletion must wait for.
    let mut issued = 3;
    let mut n = 0;
    loop {
        n += 1;
        let slots = apply_all(&api, &name, [format!("late-{n}")]).await;
        if slots.is_empty() {
            break;
        }
        issued += 1;
        assert!(n < 200, "the sale never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several reconciles later it is still there, its consumer up, nothing abandoned.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(cluster.get::<CouponEvent>(NS, &name).is_some(), "kept while its coupons are unwritten");
    assert_eq!((cluster.replicas(NS, "coupon-api"), cluster.replicas(NS, "coupon-consumer")), (Some(1), Some(2)));
    assert_eq!(warnings(&cluster, "CleanupAbandoned"), 0);

    let consumer = coupon_tests::InProcessConsumer::start(&database, &[event.spec.topic.as_str()], &kafka_brokers());
    coupon_tests::wait_for_rows(&store, &key_of(&event), issued, Duration::from_secs(30)).await;
    wait_until_gone(&cluster, "let go once written", &name, Duration::from_secs(30)).await;
    assert_eq!(warnings(&cluster, "CleanupAbandoned"), 0);
    assert_eq!(scale_history(&cluster, "coupon-consumer"), vec![2, 0], "up for the sale and the drain, down once written");
    assert_eq!(scale_history(&cluster, "coupon-api"), vec![3, 1]);
    consumer.stop().await.unwrap();
    operator.kill(&cluster);
}
