//! Reconcile against a fake API server (every request asserted) and the real Redis and Kafka
//! broker (started by `dev/stack up`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::kafka::KafkaSettings;
use coupon_core::redis::keyspace;
use coupon_operator::backend::Backend;
use coupon_operator::controller::{reconcile, ClusterCaches, Context, FINALIZER, REPORTER};
use coupon_operator::crd::{CouponEvent, CouponEventSpec, OnDelete, Phase, Schedule, Workload};
use coupon_operator::metrics::Metrics;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::ResourceExt;
use support::{FakeApiServer, Recorded};

const NS: &str = "shop";

/// The one window of a spec that has start and end.
fn window(spec: &CouponEventSpec) -> coupon_core::event::recurrence::Occurrence {
    spec.schedule.window_at(Timestamp::UNIX_EPOCH).expect("a spec of one window")
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn kafka() -> KafkaSettings {
    KafkaSettings::new(std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()))
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}-{}", std::process::id(), Timestamp::now().as_microsecond(), N.fetch_add(1, Ordering::Relaxed))
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// An event open 10:00–10:30 with a 5-minute warm-up, on its own topic.
fn coupon_event(limit: i64, on_delete: OnDelete) -> CouponEvent {
    let name = unique("ev");
    let spec = CouponEventSpec {
        event_id: None,
        exclusive_topic: true,
        limit,
        per_user_limit: 1,
        topic: format!("op.{name}"),
        partitions: 2,
        shards: 1,
        schedule: Schedule {
            start: Some(Time(t("2026-11-27T10:00:00Z"))),
            end: Some(Time(t("2026-11-27T10:30:00Z"))),
            recurrence: None,
            warm_up: Some("5m".into()),
            cool_down: Some("0s".into()),
        },
        api: Workload { deployment: "coupon-api".into(), replicas: 10, idle_replicas: Some(0) },
        consumer: Workload { deployment: "coupon-consumer".into(), replicas: 2, idle_replicas: Some(0) },
        on_delete,
        paused: false,
        ttl_after_finished: None,
    };
    let mut event = CouponEvent::new(&name, spec);
    event.metadata.namespace = Some(NS.into());
    event.metadata.generation = Some(1);
    event.metadata.uid = Some(unique("uid"));
    event
}

struct Harness {
    server: FakeApiServer,
    ctx: Arc<Context>,
    writer: reflector::store::Writer<CouponEvent>,
    /// The operator's watched cache of Deployments, fed from the fake cluster.
    deployments: reflector::store::Writer<k8s_openapi::api::apps::v1::Deployment>,
    clock: Arc<std::sync::Mutex<Timestamp>>,
}

async fn harness(now: &str) -> Harness {
    let server = FakeApiServer::default().with_deployment(NS, "coupon-api", 0).with_deployment(NS, "coupon-consumer", 0);
    harness_on(server, now).await
}

/// An operator process (new caches, new metrics) on an existing fake cluster.
async fn harness_on(server: FakeApiServer, now: &str) -> Harness {
    let backend = Backend::new(redis_url(), &kafka(), 1).unwrap();
    backend.redis.wait().await;
    harness_with(server, now, backend)
}

fn harness_with(server: FakeApiServer, now: &str, backend: Backend) -> Harness {
    let client = server.client();
    let (store, writer) = reflector::store::<CouponEvent>();
    let (deployment_cache, deployments) = reflector::store();
    let (autoscaler_cache, _) = reflector::store();
    let clock = Arc::new(std::sync::Mutex::new(t(now)));
    let read_clock = clock.clone();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), Reporter { controller: REPORTER.into(), instance: None }),
        client,
        backend: Arc::new(backend),
        events: store,
        metrics: Arc::new(Metrics::default()),
        clock: Arc::new(move || *read_clock.lock().unwrap()),
        cleanup_failing_since: Default::default(),
        caches: ClusterCaches::from_stores(deployment_cache, autoscaler_cache),
        scaler: Default::default(),
        drain_progress: Default::default(),
        max_partitions_total: None,
        namespaces: Default::default(),
    });
    Harness { server, ctx, writer, deployments, clock }
}

impl Harness {
    fn set_time(&self, now: &str) {
        *self.clock.lock().unwrap() = t(now);
    }

    /// Puts the event in the fake cluster and the reflector cache, then reconciles it.
    async fn reconcile(&mut self, event: &CouponEvent) -> Vec<Recorded> {
        self.server.put_event(event);
        self.writer.apply_watcher_event(&watcher::Event::Apply(event.clone()));
        for deployment in self.server.deployments() {
            self.deployments.apply_watcher_event(&watcher::Event::Apply(deployment));
        }
        reconcile(Arc::new(event.clone()), self.ctx.clone()).await.unwrap();
        self.server.take_requests()
    }

    /// The first two reconciles of a new event (the finalizer, then provisioning, scaling
    /// and status); returns the event as stored.
    async fn accept(&mut self, event: &CouponEvent) -> CouponEvent {
        self.reconcile(event).await;
        let stored = self.stored(event);
        self.reconcile(&stored).await;
        self.stored(event)
    }

    fn stored(&self, event: &CouponEvent) -> CouponEvent {
        self.server.event(NS, &event.name_any())
    }
}

/// `METHOD path`, with the generated name of an event series replaced by `*`.
fn shorts(requests: &[Recorded]) -> Vec<String> {
    let series = format!("{EVENTS}/");
    requests.iter().map(|r| if r.path.starts_with(&series) { format!("{} {series}*", r.method) } else { r.short() }).collect()
}

async fn redis_keys(id: &EventId) -> i64 {
    let mut conn = coupon_core::redis::RedisHandle::connect_with_deadline(&redis_url(), Duration::from_secs(5)).await.unwrap();
    keyspace::existing_keys(&mut conn, id).await.unwrap()
}

fn topic_partitions(topic: &str) -> Option<usize> {
    kafka().admin().unwrap().partitions(topic, Duration::from_secs(5)).unwrap()
}

/// Whether the broker stops knowing `topic` within 5 s (deletion is asynchronous).
fn topic_gone(topic: &str) -> bool {
    (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        topic_partitions(topic).is_none()
    })
}

/// Opens the event's Redis window around the real now (the gate judges it by Redis' clock,
/// not the harness') and issues slots to `users` users `u0`, `u1`, ... through the real gate.
async fn issue_through_the_gate(conn: &mut coupon_core::redis::RedisConnection, event_id: &EventId, spec: &CouponEventSpec, users: usize) {
    let now = jiff::Timestamp::now();
    let mut open = spec.event_config(&window(spec));
    open.incarnation = keyspace::counters(conn, event_id).await.unwrap().and_then(|c| c.incarnation);
    open.start = now - jiff::SignedDuration::from_mins(1);
    open.end = now + jiff::SignedDuration::from_mins(10);
    coupon_core::provision::provision_redis(conn, event_id, &open, false).await.unwrap();
    for user in 0..users {
        let layout = keyspace::EventLayout::new(event_id, spec.shards);
        keyspace::apply(conn, &layout, &format!("u{user}"), Duration::from_secs(5), None).await.unwrap();
    }
}

fn id(event: &CouponEvent) -> EventId {
    EventId::new(NS, &event.name_any()).unwrap()
}

const SCALE_API: &str = "/apis/apps/v1/namespaces/shop/deployments/coupon-api/scale";
const SCALE_CONSUMER: &str = "/apis/apps/v1/namespaces/shop/deployments/coupon-consumer/scale";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_reconciles_add_the_finalizer_provision_scale_and_write_status_then_nothing() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(100, OnDelete::Retain);
    let object = format!("/apis/coupons.fcfs.dev/v1alpha1/namespaces/shop/couponevents/{}", event.name_any());

    // 1. The finalizer first, and nothing else.
    let requests = h.reconcile(&event).await;
    assert_eq!(shorts(&requests), vec![format!("PATCH {object}")]);
    assert_eq!(requests[0].body[1]["value"], serde_json::json!([FINALIZER]));
    assert_eq!(redis_keys(&id(&event)).await, 0, "nothing provisioned before the finalizer is in place");

    // 2. Record who the sale is where pruning cannot drop it (before anything is made),
    // provision (the topic's creation is recorded at once), scale both Deployments, write
    // status, tell the user.
    let event = h.stored(&event);
    let mut requests = h.reconcile(&event).await;
    let identity = requests.remove(0);
    assert_eq!(shorts(std::slice::from_ref(&identity)), vec![format!("PATCH {object}")]);
    assert_eq!(
        identity.body["metadata"]["annotations"][coupon_operator::identity::INCARNATION_ANNOTATION],
        serde_json::json!(event.metadata.uid),
        "the incarnation annotated before anything is provisioned"
    );
    // Scaling first (it needs only the spec and the clock), its Events after both writes,
    // then the topic's creation recorded (annotation and flag), the status, the phase.
    assert_eq!(
        shorts(&requests),
        vec![
            format!("PATCH {SCALE_API}"),
            format!("PATCH {SCALE_CONSUMER}"),
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
            format!("PATCH {object}"),
            format!("PATCH {object}/status"),
            format!("PATCH {object}/status"),
            format!("POST {EVENTS}"),
        ]
    );
    assert_eq!(requests[0].body, serde_json::json!({"spec": {"replicas": 10}}));
    assert_eq!(requests[1].body, serde_json::json!({"spec": {"replicas": 2}}));
    assert_eq!(requests[2].body["reason"], "Scaled");
    assert_eq!(
        requests[4].body["metadata"]["annotations"][coupon_operator::identity::TOPIC_CREATED_ANNOTATION],
        serde_json::json!(event.spec.topic),
        "the topic's creation recorded where pruning cannot drop it"
    );
    assert_eq!(requests[5].body, serde_json::json!({"status": {"topicCreated": true}}), "only the flag");
    let status = &requests[6].body["status"];
    assert_eq!(status["phase"], "Open");
    assert_eq!(status["issued"], 0);
    assert_eq!(status["observedGeneration"], 1);
    let conditions: Vec<(String, String)> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap().into(), c["status"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        conditions,
        vec![
            ("Provisioned".into(), "True".into()),
            ("Open".into(), "True".into()),
            ("SoldOut".into(), "False".into()),
            ("Drained".into(), "True".into()),
            ("Scaling".into(), "True".into()),
            ("Ready".into(), "True".into()),
            ("WarmUp".into(), "True".into()),
            ("Reconciling".into(), "False".into()),
            ("Stalled".into(), "False".into())
        ]
    );
    assert_eq!(requests[7].body["reason"], "PhaseChanged");
    assert_eq!(requests[7].body["note"], "new -> Open");
    assert_eq!(h.server.replicas(NS, "coupon-api"), Some(10));
    assert_eq!(topic_partitions(&event.spec.topic), Some(2));
    let counters = h.ctx.backend.counters(&id(&event)).await.unwrap().expect("Redis config provisioned");
    assert_eq!((counters.limit, counters.topic.as_str()), (100, event.spec.topic.as_str()));

    // 3. Unchanged object: reads only.
    let event = h.stored(&event);
    let requests = h.reconcile(&event).await;
    let writes = requests.iter().filter(|r| r.is_write()).count();
    // Picked up by bench/run for its table.
    println!("BENCH| operator: writes made by reconciling an unchanged CouponEvent | {writes} | - | - | 0 |");
    assert!(requests.iter().all(|r| !r.is_write()), "{:?}", shorts(&requests));
    assert!(requests.is_empty(), "Deployments and autoscalers are read from the watched caches: {:?}", shorts(&requests));

    // 4. A new operator process (empty caches, same cluster) writes nothing either.
    let mut restarted = harness_on(h.server.clone(), "2026-11-27T10:01:30Z").await;
    let requests = restarted.reconcile(&event).await;
    assert!(requests.iter().all(|r| !r.is_write()), "{:?}", shorts(&requests));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_scales_to_idle_and_with_on_delete_delete_removes_keys_and_topic() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(50, OnDelete::Delete);
    let event = h.accept(&event).await;
    assert_eq!(redis_keys(&id(&event)).await, 1);
    assert_eq!(topic_partitions(&event.spec.topic), Some(2));

    let mut deleting = h.stored(&event);
    deleting.metadata.deletion_timestamp = Some(Time(t("2026-11-27T10:02:00Z")));
    let requests = h.reconcile(&deleting).await;
    let object = format!("/apis/coupons.fcfs.dev/v1alpha1/namespaces/shop/couponevents/{}", event.name_any());
    // The scale events repeat the ones of the scale-up, so kube's recorder updates their series.
    assert_eq!(
        shorts(&requests),
        vec![
            "GET /api/v1/namespaces/shop".to_owned(),
            format!("PATCH {SCALE_API}"),
            format!("PATCH {SCALE_CONSUMER}"),
            format!("PATCH {EVENTS}/*"),
            format!("PATCH {EVENTS}/*"),
            format!("POST {EVENTS}"),
            format!("PATCH {object}"),
        ]
    );
    assert_eq!(requests[1].body, serde_json::json!({"spec": {"replicas": 0}}));
    assert_eq!(requests[5].body["reason"], "Deleted");
    assert_eq!(requests[6].body.as_array().unwrap().last().unwrap()["op"], "remove", "finalizer removed last");
    assert_eq!(redis_keys(&id(&event)).await, 0);
    assert!(topic_gone(&event.spec.topic), "topic deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_retain_keeps_keys_and_a_shared_deployment_stays_up_for_the_other_event() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let first = coupon_event(50, OnDelete::Retain);
    let second = coupon_event(50, OnDelete::Retain);
    for event in [&first, &second] {
        h.accept(event).await;
    }
    assert_eq!(h.server.replicas(NS, "coupon-api"), Some(10));
    let mut deleting = h.stored(&first);
    deleting.metadata.deletion_timestamp = Some(Time(t("2026-11-27T10:02:00Z")));
    let requests = h.reconcile(&deleting).await;
    assert_eq!(shorts(&requests).iter().filter(|r| r.contains("/scale") && r.starts_with("PATCH")).count(), 0, "{:?}", shorts(&requests));
    assert_eq!(h.server.replicas(NS, "coupon-api"), Some(10), "the other event still needs it");
    assert_eq!(redis_keys(&id(&first)).await, 1, "Retain keeps the Redis keys");
    // ... and closes the sale: its window now ends at the deletion.
    let counters = h.ctx.backend.counters(&id(&first)).await.unwrap().unwrap();
    assert_eq!(counters.end_ms, t("2026-11-27T10:01:00Z").as_millisecond(), "closed at the operator's now");
    assert!(requests.iter().any(|r| r.body["reason"] == "SaleClosed"), "{:?}", shorts(&requests));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_before_start_fails_with_a_condition_and_touches_neither_redis_nor_kafka() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let mut event = coupon_event(100, OnDelete::Retain);
    event.spec.schedule.end = Some(Time(t("2026-11-27T09:00:00Z")));
    event.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let requests = h.reconcile(&event).await;
    let status_patch = requests.iter().find(|r| r.path.ends_with("/status")).expect("status written");
    let status = &status_patch.body["status"];
    assert_eq!(status["phase"], "Failed");
    let provisioned = &status["conditions"][0];
    assert_eq!(
        (provisioned["type"].as_str(), provisioned["status"].as_str(), provisioned["reason"].as_str()),
        (Some("Provisioned"), Some("False"), Some("InvalidSpec"))
    );
    assert!(provisioned["message"].as_str().unwrap().contains("must be after"), "{provisioned}");
    let warning = requests.iter().find(|r| r.path == EVENTS).expect("event published");
    assert_eq!(warning.body["type"], "Warning");
    assert_eq!(redis_keys(&id(&event)).await, 0);
    assert_eq!(topic_partitions(&event.spec.topic), None);
    assert_eq!(h.server.replicas(NS, "coupon-api"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_limit_below_issued_fails_and_changes_nothing() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(10, OnDelete::Retain);
    let event = h.accept(&event).await;
    // Five coupons issued through the real gate.
    let mut conn = h.ctx.backend.redis.get().unwrap();
    issue_through_the_gate(&mut conn, &id(&event), &event.spec, 5).await;
    let before = h.ctx.backend.counters(&id(&event)).await.unwrap().unwrap();
    assert_eq!(before.issued, 5);

    let mut lowered = h.stored(&event);
    lowered.spec.limit = 3;
    lowered.metadata.generation = Some(2);
    let requests = h.reconcile(&lowered).await;
    let status = &requests.iter().find(|r| r.path.ends_with("/status")).expect("status written").body["status"];
    // A refused edit of a live event: the sale goes on as accepted, nothing is scaled.
    assert_eq!(status["phase"], "Open", "the last accepted spec stays in effect");
    assert_eq!(status["conditions"][0]["reason"], "LimitBelowIssued");
    assert!(status["conditions"][0]["message"].as_str().unwrap().contains("below the 5 coupons already issued"));
    let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("LimitBelowIssued")));
    assert!(ready["message"].as_str().unwrap().contains("last accepted spec stays in effect"), "{ready}");
    assert_eq!(status["lastAcceptedSpec"]["limit"], 10);
    assert_eq!(status["issued"], 5);
    assert!(!shorts(&requests).iter().any(|r| r.contains("/scale") && r.starts_with("PATCH")), "{:?}", shorts(&requests));
    assert_eq!(h.server.replicas(NS, "coupon-api"), Some(10));
    assert!(requests.iter().any(|r| r.body["reason"] == "LimitBelowIssued" && r.body["type"] == "Warning"), "a Warning Event");
    // The refused limit is not written; the accepted spec is provisioned again as it was
    // (which puts back the accepted window this test had moved by hand).
    let after = h.ctx.backend.counters(&id(&event)).await.unwrap().unwrap();
    assert_eq!((after.limit, after.issued, &after.topic), (before.limit, before.issued, &before.topic), "limit and counters unchanged");
    // An edit the CRD's CEL rules would let through but the operator refuses (a warm-up of
    // 48 h): the same, and the same Warning is not repeated on the next reconcile.
    let mut invalid = h.stored(&lowered);
    invalid.spec.schedule.warm_up = Some("48h".into());
    invalid.metadata.generation = Some(3);
    let requests = h.reconcile(&invalid).await;
    assert!(!shorts(&requests).iter().any(|r| r.contains("/scale") && r.starts_with("PATCH")), "{:?}", shorts(&requests));
    let stored = h.stored(&invalid).status.unwrap();
    assert_eq!(stored.phase, Phase::Open);
    assert_eq!(stored.conditions.iter().find(|c| c.type_ == "Ready").unwrap().reason, "InvalidSpec");
    let again = h.reconcile(&h.stored(&invalid)).await;
    assert!(!again.iter().any(|r| r.body["type"] == "Warning"), "reported once: {:?}", shorts(&again));

    // Raising it is applied in place, counters kept.
    let mut raised = h.stored(&invalid);
    raised.spec.limit = 20;
    raised.spec.schedule.warm_up = Some("5m".into());
    raised.metadata.generation = Some(4);
    h.reconcile(&raised).await;
    let after = h.ctx.backend.counters(&id(&event)).await.unwrap().unwrap();
    assert_eq!((after.limit, after.issued), (20, 5));
    assert_eq!(h.stored(&raised).status.unwrap().phase, Phase::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_is_idempotent_and_keeps_counters() {
    let backend = Backend::new(redis_url(), &kafka(), 1).unwrap();
    backend.redis.wait().await;
    let event = coupon_event(10, OnDelete::Delete);
    let event_id = id(&event);
    backend.ensure_topic(&event.spec).await.unwrap();
    assert_eq!(
        backend.provision_redis(&event_id, &event.spec, &window(&event.spec), false, None).await.unwrap(),
        coupon_core::provision::RedisOutcome::Created
    );
    assert_eq!(topic_partitions(&event.spec.topic), Some(2));
    // Second run: nothing changes.
    backend.ensure_topic(&event.spec).await.unwrap();
    assert_eq!(
        backend.provision_redis(&event_id, &event.spec, &window(&event.spec), false, None).await.unwrap(),
        coupon_core::provision::RedisOutcome::Unchanged
    );
    // Issued coupons survive re-provisioning with a new window: four issued through the real
    // gate.
    let mut conn = backend.redis.get().unwrap();
    issue_through_the_gate(&mut conn, &event_id, &event.spec, 4).await;
    let mut moved = event.spec.clone();
    moved.schedule.end = Some(Time(t("2026-11-27T10:45:00Z")));
    assert_eq!(
        backend.provision_redis(&event_id, &moved, &window(&moved), false, None).await.unwrap(),
        coupon_core::provision::RedisOutcome::Updated
    );
    let counters = backend.counters(&event_id).await.unwrap().unwrap();
    assert_eq!(counters.issued, 4);
    assert_eq!(counters.end_ms, t("2026-11-27T10:45:00Z").as_millisecond());
    backend.delete_redis(&event_id).await.unwrap();
    backend.delete_topic(&event.spec.topic).await.unwrap();
    assert_eq!(redis_keys(&event_id).await, 0);
}

/// `(api group, resource, verb)` of a request, as RBAC sees it.
fn permission(request: &Recorded) -> (String, String, String) {
    let parts: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    if let ["api", "v1", "namespaces", _] = parts.as_slice() {
        // A namespace itself (cluster-scoped, core group).
        return (String::new(), "namespaces".to_owned(), "get".to_owned());
    }
    // /apis/{group}/{version}/namespaces/{ns}/{resource}[/{name}[/{subresource}]]
    let group = parts[1].to_owned();
    let resource = match parts.get(7) {
        Some(sub) => format!("{}/{sub}", parts[5]),
        None => parts[5].to_owned(),
    };
    let verb = match (request.method.as_str(), parts.len()) {
        ("GET", 6) => "list",
        ("GET", _) => "get",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (other, _) => panic!("unexpected method {other}"),
    };
    (group, resource, verb.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_rbac_rules_are_exactly_what_the_operator_calls() {
    use std::collections::BTreeSet;
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(10, OnDelete::Retain);
    let mut used: BTreeSet<(String, String, String)> = BTreeSet::new();
    used.extend(h.reconcile(&event).await.iter().map(permission));
    let stored = h.stored(&event);
    used.extend(h.reconcile(&stored).await.iter().map(permission));
    let mut deleting = h.stored(&event);
    deleting.metadata.deletion_timestamp = Some(Time(t("2026-11-27T10:02:00Z")));
    used.extend(h.reconcile(&deleting).await.iter().map(permission));
    // What this fake flow cannot show (watches, a 409, an autoscaler), listed by the code
    // that makes those calls; the loop tests on the real server check them against the rules.
    for (group, resource, verbs) in coupon_operator::controller::PERMISSIONS_BEYOND_RECONCILE {
        used.extend(verbs.iter().map(|v| (group.to_string(), resource.to_string(), v.to_string())));
    }
    let granted = |file: &str| {
        let rules_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/coupon-system/files").join(file);
        let rules: Vec<serde_json::Value> = serde_saphyr::from_str(&std::fs::read_to_string(rules_file).unwrap()).unwrap();
        let mut granted = BTreeSet::new();
        for rule in &rules {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert((
                            group.as_str().unwrap().to_owned(),
                            resource.as_str().unwrap().to_owned(),
                            verb.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
        granted
    };
    let (namespaced, cluster_wide) = (granted("operator-rules.yaml"), granted("operator-namespace-rules.yaml"));
    let (on_namespaces, in_namespaces): (BTreeSet<_>, BTreeSet<_>) =
        used.into_iter().partition(|(_, resource, _)| resource == "namespaces");
    assert_eq!(namespaced, in_namespaces, "RBAC rules must match the operator's calls exactly (least privilege)");
    let namespace_rules: BTreeSet<_> = cluster_wide.iter().filter(|(_, resource, _)| resource == "namespaces").cloned().collect();
    assert_eq!(namespace_rules, on_namespaces, "the cluster-wide rules on namespaces are exactly the namespace calls");
    assert!(cluster_wide.is_subset(&namespace_rules.union(&namespaced).cloned().collect()), "the cluster-wide rules grant nothing more");
    let (group, resource, verbs) = coupon_operator::controller::namespaces::SELECTOR_PERMISSIONS;
    let selecting: BTreeSet<_> = verbs.iter().map(|v| (group.to_owned(), resource.to_owned(), v.to_string())).collect();
    assert_eq!(granted("operator-namespace-selector-rules.yaml"), selecting, "a selector's rules are exactly its watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_mid_window_neither_flaps_nor_provisions_again() {
    let mut first = harness("2026-11-27T09:50:00Z").await;
    let event = coupon_event(100, OnDelete::Retain);
    let mut scale_patches = Vec::new();
    let mut record = |now: &str, requests: &[Recorded]| {
        for r in requests.iter().filter(|r| r.method == http::Method::PATCH && r.path.ends_with("/scale")) {
            scale_patches.push((
                now.to_owned(),
                r.path.rsplit('/').nth(1).unwrap().to_owned(),
                r.body["spec"]["replicas"].as_i64().unwrap(),
            ));
        }
    };
    first.reconcile(&event).await; // finalizer
    for now in [
        "2026-11-27T09:50:00Z",
        "2026-11-27T09:54:59Z",
        "2026-11-27T09:55:00Z",
        "2026-11-27T09:58:00Z",
        "2026-11-27T10:00:00Z",
        "2026-11-27T10:05:00Z",
    ] {
        first.set_time(now);
        let stored = first.stored(&event);
        let requests = first.reconcile(&stored).await;
        record(now, &requests);
    }
    // The operator restarts: new process, empty caches, same cluster.
    let mut second = harness_on(first.server.clone(), "2026-11-27T10:06:00Z").await;
    for now in ["2026-11-27T10:06:00Z", "2026-11-27T10:15:00Z", "2026-11-27T10:29:59Z", "2026-11-27T10:30:00Z", "2026-11-27T10:45:00Z"] {
        second.set_time(now);
        let stored = second.stored(&event);
        let requests = second.reconcile(&stored).await;
        record(now, &requests);
    }
    assert_eq!(
        scale_patches,
        vec![
            ("2026-11-27T09:55:00Z".to_owned(), "coupon-api".to_owned(), 10),
            ("2026-11-27T09:55:00Z".to_owned(), "coupon-consumer".to_owned(), 2),
            ("2026-11-27T10:30:00Z".to_owned(), "coupon-api".to_owned(), 0),
            ("2026-11-27T10:30:00Z".to_owned(), "coupon-consumer".to_owned(), 0),
        ],
        "scaled exactly at the boundaries, nothing in between or at the restart"
    );
    assert_eq!(first.ctx.metrics.topic_provisionings.get(), 1, "topic created once");
    assert_eq!(second.ctx.metrics.topic_provisionings.get(), 0, "not again after the restart");
    assert_eq!(second.stored(&event).status.unwrap().phase, Phase::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_lost_with_redis_is_written_back_marked_recovering() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(100, OnDelete::Retain);
    h.accept(&event).await;
    // Redis loses the event's keys (the whole Redis in real life; this Redis is shared).
    let mut conn = h.ctx.backend.redis.get().unwrap();
    keyspace::delete_event(&mut conn, &id(&event)).await.unwrap();

    let requests = h.reconcile(&h.stored(&event)).await;
    let lost = requests.iter().find(|r| r.body["reason"] == "RedisStateLost").expect("a Warning Event says so");
    assert_eq!(lost.body["type"], "Warning");
    let recovering = keyspace::counters(&mut conn, &id(&event)).await.unwrap().unwrap().recovering;
    assert!(recovering, "written back closed, not counting from zero");
    let listed = |members: Vec<String>| members.contains(&id(&event).to_string());
    assert!(listed(keyspace::registered_events(&mut conn).await.unwrap()), "listed for the consumer's restore");
    // The listing runs outside the script; one lost listing is made again by the next
    // reconcile instead of leaving the event answering 503 for ever.
    keyspace::unregister(&mut conn, &id(&event).to_string()).await.unwrap();
    h.reconcile(&h.stored(&event)).await;
    assert!(listed(keyspace::registered_events(&mut conn).await.unwrap()), "listed again");
    // A brand-new event is never marked recovering.
    let fresh = coupon_event(100, OnDelete::Retain);
    h.reconcile(&fresh).await;
    h.reconcile(&h.stored(&fresh)).await;
    assert!(!keyspace::counters(&mut conn, &id(&fresh)).await.unwrap().unwrap().recovering);
    keyspace::delete_event(&mut conn, &id(&event)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healed_coupons_are_reported_in_the_status_and_the_event_counts_as_drained() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(10, OnDelete::Retain);
    let event = h.accept(&event).await;
    // Three coupons issued through the real gate; one is written, two were never delivered
    // and are healed.
    let mut conn = h.ctx.backend.redis.get().unwrap();
    issue_through_the_gate(&mut conn, &id(&event), &event.spec, 3).await;
    assert_eq!(
        keyspace::mark_written(
            &mut conn,
            &coupon_core::event::EventKey::new(id(&event), event.metadata.uid.as_deref()).unwrap(),
            &keyspace::EventLayout::single(&id(&event)),
            &[("u0", 1)]
        )
        .await
        .unwrap(),
        1
    );
    let overdue = keyspace::overdue_entries(&mut conn, &keyspace::EventLayout::single(&id(&event)), 0, i64::MAX, 10).await.unwrap();
    assert_eq!(overdue.len(), 2);
    let verdicts: Vec<_> = overdue.into_iter().map(|entry| (entry, keyspace::HealVerdict::Free)).collect();
    let healed = keyspace::heal(&mut conn, &keyspace::EventLayout::single(&id(&event)), 0, i64::MAX, &verdicts).await.unwrap();
    assert_eq!(healed, keyspace::Healed { healed: 2, written: 0 });

    let mut reopened = h.stored(&event);
    reopened.spec = event.spec.clone();
    let requests = h.reconcile(&reopened).await;
    let status = &requests.iter().find(|r| r.path.ends_with("/status")).expect("status written").body["status"];
    assert_eq!((status["issued"].as_i64(), status["persisted"].as_i64(), status["healed"].as_i64()), (Some(1), Some(1), Some(2)));
    let drained = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Drained").unwrap();
    assert_eq!(drained["status"], "True", "{drained}");
    keyspace::delete_event(&mut conn, &id(&event)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_delete_keeps_a_shared_or_foreign_topic_and_a_deleted_topic_is_created_again() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    // Two events on one topic, both deleted with `onDelete: Delete`.
    let first = coupon_event(50, OnDelete::Delete);
    let mut second = coupon_event(50, OnDelete::Delete);
    second.spec.topic = first.spec.topic.clone();
    for event in [&first, &second] {
        h.accept(event).await;
    }
    assert!(h.stored(&first).status.unwrap().topic_created, "the first event created the topic");
    assert!(!h.stored(&second).status.unwrap().topic_created, "the second found it");

    // Someone deletes the topic: the next reconcile creates it again and says so.
    kafka().admin().unwrap().delete_topic(&first.spec.topic).await.unwrap();
    assert!(topic_gone(&first.spec.topic), "topic deleted by hand");
    let requests = h.reconcile(&h.stored(&first)).await;
    assert!(requests.iter().any(|r| r.body["reason"] == "TopicRecreated"), "{:?}", shorts(&requests));
    assert_eq!(topic_partitions(&first.spec.topic), Some(2), "created again");

    // Deleting the first keeps the topic the second still uses.
    let mut deleting = h.stored(&first);
    deleting.metadata.deletion_timestamp = Some(Time(t("2026-11-27T10:02:00Z")));
    let requests = h.reconcile(&deleting).await;
    let kept = requests.iter().find(|r| r.body["reason"] == "TopicKept").expect("a Warning says why");
    assert!(kept.body["note"].as_str().unwrap().contains(&second.name_any()), "{}", kept.body);
    assert_eq!(redis_keys(&id(&first)).await, 0, "its own Redis keys go");
    h.writer.apply_watcher_event(&watcher::Event::Delete(deleting.clone()));
    // The second did not create the topic: deleting it keeps the topic as well.
    let mut deleting = h.stored(&second);
    deleting.metadata.deletion_timestamp = Some(Time(t("2026-11-27T10:03:00Z")));
    let requests = h.reconcile(&deleting).await;
    let kept = requests.iter().find(|r| r.body["reason"] == "TopicKept").expect("a Warning says why");
    assert!(kept.body["note"].as_str().unwrap().contains("existed before"), "{}", kept.body);
    assert_eq!(topic_partitions(&first.spec.topic), Some(2), "the topic is still there");
    kafka().admin().unwrap().delete_topic(&first.spec.topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_gives_up_on_an_unreachable_redis_after_its_patience_and_says_so() {
    // Provisioned by an operator that reached Redis ...
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(50, OnDelete::Delete);
    let event = h.accept(&event).await;
    // ... deleted while the operator cannot reach it (nothing listens on port 1).
    let unreachable = Backend::new("redis://127.0.0.1:1", &kafka(), 1).unwrap();
    let mut lost = harness_with(h.server.clone(), "2026-11-27T10:02:30Z", unreachable);
    let mut deleting = lost.stored(&event);
    deleting.metadata.deletion_timestamp = Some(Time(t("2026-11-27T10:02:00Z")));
    lost.server.put_event(&deleting);
    lost.writer.apply_watcher_event(&watcher::Event::Apply(deleting.clone()));
    let early = reconcile(Arc::new(deleting.clone()), lost.ctx.clone()).await;
    assert!(early.is_err(), "retried while within its patience");
    assert!(lost.server.event(NS, &event.name_any()).metadata.finalizers.is_some_and(|f| !f.is_empty()), "finalizer kept");
    lost.server.take_requests();
    lost.set_time("2026-11-27T10:05:00Z");
    let requests = lost.reconcile(&deleting).await;
    let abandoned = requests.iter().find(|r| r.body["reason"] == "CleanupAbandoned").expect("a Warning says what was left");
    assert!(abandoned.body["note"].as_str().unwrap().contains("Redis keys"), "{}", abandoned.body);
    assert_eq!(requests.last().unwrap().body.as_array().unwrap().last().unwrap()["op"], "remove", "finalizer removed");
    // The keys are still there for someone to clean up.
    assert_eq!(redis_keys(&id(&event)).await, 1);
    keyspace::delete_event(&mut h.ctx.backend.redis.get().unwrap(), &id(&event)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_topic_of_an_accepted_event_is_refused_and_the_old_topic_stays_in_effect() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(50, OnDelete::Retain);
    let event = h.accept(&event).await;
    let mut moved = h.stored(&event);
    moved.spec.topic = format!("{}.moved", event.spec.topic);
    moved.metadata.generation = Some(2);
    let requests = h.reconcile(&moved).await;
    let status = h.stored(&moved).status.unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ImmutableField"));
    assert_eq!(status.phase, Phase::Open, "the sale goes on on its topic");
    assert_eq!(status.last_accepted_spec.unwrap().topic, event.spec.topic);
    assert_eq!(topic_partitions(&moved.spec.topic), None, "no second topic");
    let counters = h.ctx.backend.counters(&id(&event)).await.unwrap().unwrap();
    assert_eq!(counters.topic, event.spec.topic, "Redis keeps the accepted topic");
    assert!(!shorts(&requests).iter().any(|r| r.contains("/scale") && r.starts_with("PATCH")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_used_by_an_event_of_a_namespace_the_operator_does_not_watch_is_kept() {
    let mut h = harness("2026-11-27T10:01:00Z").await;
    let event = coupon_event(50, OnDelete::Delete);
    let event = h.accept(&event).await;
    assert!(h.stored(&event).status.unwrap().topic_created);
    // Another shop's event on the same topic, known only to Redis' event registry.
    let foreign = EventId::new("other-shop", &unique("ev")).unwrap();
    let mut conn = h.ctx.backend.redis.get().unwrap();
    coupon_core::provision::provision_redis(&mut conn, &foreign, &event.spec.event_config(&window(&event.spec)), false).await.unwrap();

    let mut deleting = h.stored(&event);
    deleting.metadata.deletion_timestamp = Some(Time(t("2026-11-27T10:02:00Z")));
    let requests = h.reconcile(&deleting).await;
    let kept = requests.iter().find(|r| r.body["reason"] == "TopicKept").expect("a Warning says why");
    assert!(kept.body["note"].as_str().unwrap().contains(&foreign.to_string()), "{}", kept.body);
    assert_eq!(topic_partitions(&event.spec.topic), Some(2), "the other shop's records stay");
    keyspace::delete_event(&mut conn, &foreign).await.unwrap();
    kafka().admin().unwrap().delete_topic(&event.spec.topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_optional_field_is_written_once_and_then_nothing() {
    let mut h = harness("2026-11-27T09:00:00Z").await;
    let mut event = coupon_event(50, OnDelete::Retain);
    event.spec.api.idle_replicas = Some(3);
    h.accept(&event).await;
    // The user drops idleReplicas: the status takes the default (1), once.
    let mut edited = h.stored(&event);
    edited.spec.api.idle_replicas = None;
    edited.metadata.generation = Some(2);
    h.reconcile(&edited).await;
    let status = h.stored(&edited).status.unwrap();
    assert_eq!(status.last_accepted_spec.unwrap().api.idle_replicas, Some(1));
    let again = h.reconcile(&h.stored(&edited)).await;
    assert!(again.iter().all(|r| !r.is_write()), "{:?}", shorts(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_deployment_makes_the_event_not_ready_with_one_warning() {
    let server = FakeApiServer::default().with_deployment(NS, "coupon-consumer", 0);
    let mut h = harness_on(server, "2026-11-27T10:01:00Z").await;
    let event = coupon_event(50, OnDelete::Retain);
    h.reconcile(&event).await;
    let requests = h.reconcile(&h.stored(&event)).await;
    let warnings: Vec<_> = requests.iter().filter(|r| r.body["reason"] == "DeploymentNotFound").collect();
    assert_eq!(warnings.len(), 1, "{:?}", shorts(&requests));
    let status = h.stored(&event).status.unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "DeploymentNotFound"));
    assert!(ready.message.contains("coupon-api"), "{}", ready.message);
    let again = h.reconcile(&h.stored(&event)).await;
    assert!(again.iter().all(|r| !r.is_write()), "reported once: {:?}", shorts(&again));
}

/// The controller's watch triggers a reconcile on spec, deletion and finalizer changes,
/// never on the operator's own status writes (which would loop while counters move).
#[test]
fn status_writes_do_not_trigger_a_reconcile() {
    use coupon_operator::controller::reconcile_trigger;
    let event = coupon_event(50, OnDelete::Retain);
    let base = reconcile_trigger(&event);
    let mut with_status = event.clone();
    with_status.status = Some(coupon_operator::crd::CouponEventStatus { issued: 7, persisted: 3, ..Default::default() });
    with_status.metadata.resource_version = Some("42".into());
    assert_eq!(reconcile_trigger(&with_status), base, "status and resourceVersion only");
    let mut edited = event.clone();
    edited.metadata.generation = Some(2);
    assert_ne!(reconcile_trigger(&edited), base, "a spec change");
    let mut deleting = event.clone();
    deleting.metadata.deletion_timestamp = Some(Time(t("2026-11-27T10:02:00Z")));
    assert_ne!(reconcile_trigger(&deleting), base, "a deletion");
    let mut finalized = event.clone();
    finalized.metadata.finalizers = Some(vec!["coupons.fcfs.dev/cleanup".into()]);
    assert_ne!(reconcile_trigger(&finalized), base, "a finalizer");
}
