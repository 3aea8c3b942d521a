//! How the real operator writes status and lets objects go, against the local control plane's
//! real API server, its real namespace controller and real Redis and Kafka: a status computed
//! from a stale copy never overwrites what another writer put there in between, and deleting
//! a namespace never hangs on the operator's finalizer.

use std::sync::Arc;
use std::time::Duration;

use coupon_operator::backend::Backend;
use coupon_operator::controller::{ClusterCaches, Context, FINALIZER};
use coupon_operator::crd::{CouponEvent, OnDelete, Phase};
use coupon_operator::metrics::Metrics;
use coupon_tests::local_cluster::operator::*;
use coupon_tests::{kafka, kafka_brokers, redis_url, wait_until, InProcessApi};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

/// The object in hand is stale (a reflector cache behind the server): another writer (a
/// former leader's last write) put a status there since, `Provisioned` for an hour. The
/// reconcile's status write carries the resourceVersion it read, is answered 409, and the
/// status is computed again from the server's: the condition keeps its hour-old transition
/// instead of being stamped "now" from the stale view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_computed_from_a_stale_copy_is_refused_and_computed_again() {
    let cluster = cluster().await;
    let client = cluster.client("operator-0").await;
    let backend = Backend::new(redis_url(), &kafka(&kafka_brokers()), 1).unwrap();
    let (store, _writer) = kube::runtime::reflector::store();
    let (caches, keep_current) = ClusterCaches::watch(client.clone(), Some(&cluster.namespace));
    let caches_task = tokio::spawn(keep_current);
    caches.synced().await;
    let ctx = Arc::new(Context::new(client, Arc::new(backend), store, caches, Arc::new(Metrics::default())));
    let mut event = coupon_event(&cluster, 10, SignedDuration::from_hours(1), SignedDuration::from_hours(2));
    event.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let stale = cluster.create(&event).await;
    let name = stale.metadata.name.clone().unwrap();
    let an_hour_ago = Timestamp::from_second(Timestamp::now().as_second() - 3600).unwrap();
    let condition = json!({"type": "Provisioned", "status": "True", "reason": "Provisioned",
                           "message": "Redis configuration and Kafka topic are in place",
                           "lastTransitionTime": an_hour_ago.to_string(), "observedGeneration": 1});
    cluster.patch_status::<CouponEvent>(&name, json!({ "status": { "phase": "Scheduled", "conditions": [condition] } })).await;

    coupon_operator::controller::reconcile(Arc::new(stale), ctx).await.expect("the reconcile handles the conflict");

    let status_codes: Vec<u16> = status_writes(&cluster.requests(), &name).map(|r| r.code).collect();
    assert!(status_codes.contains(&409), "the stale write was refused: {status_codes:?}");
    assert_eq!(status_codes.last(), Some(&200), "and written again: {status_codes:?}");
    let stored = cluster.get::<CouponEvent>(&name).await.unwrap().status.unwrap();
    assert_eq!(stored.phase, Phase::Scheduled);
    let provisioned = stored.conditions.iter().find(|c| c.type_ == "Provisioned").unwrap();
    assert_eq!(provisioned.last_transition_time.0, an_hour_ago, "the other writer's transition is kept");
    assert!(stored.last_accepted_spec.is_some(), "the rest of the status is this reconcile's");
    assert_nothing_refused(&cluster);
    caches_task.abort();
}

/// Deleting a namespace whose `Retain` event has coupons no consumer will write (the
/// namespace controller deletes the consumer's Deployment too): the operator (living in
/// another namespace, as a release's does) closes the sale once and lets the object go at
/// once, so the real namespace controller finishes; without that the deletion waited for the
/// drain's patience, or for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_namespace_of_an_event_with_unwritten_coupons_never_hangs_on_the_finalizer() {
    let (home, shop) = (cluster().await, cluster().await);
    let operator = start_operator_watching(&home, &shop, "operator-0").await;
    let mut event = coupon_event(&shop, 5, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    event.spec.on_delete = OnDelete::Retain;
    let event = shop.create(&event).await;
    let name = event.metadata.name.clone().unwrap();
    wait_for_phase(&shop, &name, Phase::Open).await;
    let api = InProcessApi::start(&shop.namespace, &kafka_brokers()).await;
    // No consumer: three coupons wait on the topic.
    assert_eq!(apply_all(&api, &shop.namespace, &name, (1..=3).map(|u| format!("user-{u}"))).await, vec![1, 2, 3]);

    let deleted_at = std::time::Instant::now();
    shop.delete_namespace().await;
    let shop_ref = &shop;
    wait_until("the namespace is gone", Duration::from_secs(45), || async move { (!shop_ref.namespace_exists().await).then_some(()) })
        .await;
    // The sale was closed before the object was let go.
    let id = coupon_core::event::EventId::new(&shop.namespace, &name).unwrap();
    let mut redis = coupon_tests::redis().await;
    let counters = coupon_core::redis::keyspace::counters(&mut redis, &id).await.unwrap().expect("Retain keeps the state");
    assert!(counters.end_ms <= Timestamp::now().as_millisecond(), "the sale is closed");
    assert_eq!(counters.issued, 3);
    // Nothing refused, but the Events a terminating namespace no longer takes (a Warning
    // emitted by a look that began just before the deletion).
    let refused: Vec<String> = home
        .requests()
        .into_iter()
        .filter(|r| r.code == 403 || r.code == 422 || (r.resource == "events" && r.code >= 400))
        .filter(|r| !(r.resource == "events" && r.at >= deleted_at && r.path.contains(&shop.namespace)))
        .map(|r| format!("{} {} -> {}", r.verb, r.path, r.code))
        .collect();
    assert!(refused.is_empty(), "the API server refused: {refused:#?}");
    operator.kill(&home);
}
