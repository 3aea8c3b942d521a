//! Who a sale is, against the local control plane's real API server and real Redis, Kafka
//! and SQL: an identity the user chooses (`spec.eventId`) survives the object.

use std::time::Duration;

use coupon_operator::crd::{CouponEvent, OnDelete, Phase};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::{kafka_brokers, unique, InProcessApi, InProcessConsumer};
use k8s_openapi::jiff::SignedDuration;

/// An event with an `eventId`, deleted and created again mid-sale (Argo CD `Replace=true`,
/// a backup restored without status, `kubectl replace --force`), under another name even:
/// the same sale goes on. Users who got a coupon keep it, the limit is handed out once, and
/// the rows are keyed `<namespace>/<eventId>`. (Without an `eventId`, a re-created name is a
/// new event: `operator_loop::a_re_created_name_*`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_an_event_id_deleted_and_created_again_continues_the_same_sale() {
    let cluster = cluster().await;
    let operator = start_operator(&cluster, "operator-0").await;
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let event_id = unique("sale").replace('_', "-").to_lowercase();
    let mut first = coupon_event(&cluster, 5, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    first.spec.event_id = Some(event_id.clone());
    first.spec.on_delete = OnDelete::Retain;
    let topic = first.spec.topic.clone();
    let first = cluster.create(&first).await;
    let first_name = first.metadata.name.clone().unwrap();
    wait_for_phase(&cluster, &first_name, Phase::Open).await;
    let consumer = InProcessConsumer::start(&database, &[topic.as_str()], &kafka_brokers());
    let api = InProcessApi::start(&cluster.namespace, &kafka_brokers()).await;
    let users = |range: std::ops::RangeInclusive<usize>| range.map(|u| format!("user-{u}"));
    assert_eq!(apply_all(&api, &cluster.namespace, &event_id, users(1..=3)).await, vec![1, 2, 3]);
    coupon_tests::wait_for_rows(&store, &key_of(&first), 3, Duration::from_secs(30)).await;

    // Deleted (Retain: the sale is closed, its coupons are written) and created again under
    // another name with the same eventId.
    cluster.delete::<CouponEvent>(&first_name).await;
    wait_until_gone(&cluster, "the first object is gone", &first_name, Duration::from_secs(30)).await;
    let mut second = coupon_event(&cluster, 5, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    second.spec.event_id = Some(event_id.clone());
    second.spec.on_delete = OnDelete::Retain;
    second.spec.topic = topic.clone();
    let second = cluster.create(&second).await;
    let second_name = second.metadata.name.clone().unwrap();
    let reopened = wait_for_phase(&cluster, &second_name, Phase::Open).await;
    assert_eq!(reopened.status.as_ref().unwrap().issued, 3, "the same sale's counts");
    // The same users are known (the events' URL names the eventId), and only the two coupons
    // left are handed out.
    assert_eq!(apply_all(&api, &cluster.namespace, &event_id, users(1..=3)).await, Vec::<i64>::new(), "no second coupon");
    assert_eq!(apply_all(&api, &cluster.namespace, &event_id, users(4..=12)).await, vec![4, 5]);
    coupon_tests::wait_for_rows(&store, &key_of(&second), 5, Duration::from_secs(30)).await;
    assert_eq!(coupon_tests::wait_for_stable_rows(&store, &key_of(&second), Duration::from_secs(5)).await, 5);
    assert!(store.failed_events(&topic).await.unwrap().is_empty(), "nothing failed");
    consumer.stop().await.unwrap();
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}
