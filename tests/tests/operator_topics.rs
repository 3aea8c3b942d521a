//! What the real operator does with Kafka topics, against the local control plane's real API
//! server, the real broker and real Redis servers: a topic is deleted only when it is
//! provably one event's alone, never because the operator's own view (its namespace, its
//! Redis) sees no other user of it.

use std::time::Duration;

use coupon_operator::crd::{CouponEvent, OnDelete, Phase};
use coupon_service::app::ApiSettings;
use coupon_tests::kafka_filter::{KafkaFilter, CREATE_TOPICS};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::{kafka, kafka_brokers, unique, wait_until, InProcessApi, InProcessConsumer, OwnRedis, OwnTansu};
use k8s_openapi::jiff::SignedDuration;

/// Two releases, each with its own operator and its own Redis, on one broker and one topic
/// (the README's shared-topic setup). Release A created the topic; its event is deleted with
/// `onDelete: Delete` while release B sells on it with its consumer behind. A sees no other
/// user of the topic (not in its namespace, not in its Redis), yet keeps it: every 201 of B
/// gets its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_keeps_a_topic_another_release_sells_on() {
    let (first, second) = (cluster().await, cluster().await);
    let own_redis = OwnRedis::start().await;
    let operator_a = start_operator(&first, "operator-a").await;
    let operator_b = start_operator_on(&second, "operator-b", &own_redis.url()).await;
    let topic = unique("shared");

    let mut event_a = coupon_event(&first, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    event_a.spec.topic = topic.clone();
    event_a.spec.on_delete = OnDelete::Delete;
    let event_a = first.create(&event_a).await;
    let name_a = event_a.metadata.name.clone().unwrap();
    let open = wait_for_phase(&first, &name_a, Phase::Open).await;
    assert!(open.status.unwrap().topic_created, "release A's operator created the topic");

    let mut event_b = coupon_event(&second, 40, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    event_b.spec.topic = topic.clone();
    let event_b = second.create(&event_b).await;
    let name_b = event_b.metadata.name.clone().unwrap();
    wait_for_phase(&second, &name_b, Phase::Open).await;
    let settings = ApiSettings {
        namespace: second.namespace.clone(),
        redis_url: own_redis.url(),
        kafka: kafka(&kafka_brokers()),
        ..ApiSettings::default()
    };
    let api_b = InProcessApi::start_ready(settings).await;
    // B sells; its consumer is behind (not running yet): its records wait on the topic.
    let mut slots = apply_all(&api_b, &second.namespace, &name_b, (1..=20).map(|u| format!("user-{u}"))).await;
    assert_eq!(slots.len(), 20);

    first.delete::<CouponEvent>(&name_a).await;
    wait_until_gone(&first, "release A's event is gone", &name_a, Duration::from_secs(30)).await;
    assert_eq!(warnings(&first, "TopicKept").await, 1, "A says why it kept the topic");
    // B goes on selling after A's deletion.
    slots.extend(apply_all(&api_b, &second.namespace, &name_b, (21..=30).map(|u| format!("user-{u}"))).await);
    assert_eq!(slots.len(), 30);

    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let consumer = InProcessConsumer::start_with_redis(&database, &[topic.as_str()], &kafka_brokers(), &own_redis.url());
    coupon_tests::wait_for_rows(&store, &key_of(&event_b), 30, Duration::from_secs(60)).await;
    assert_eq!(coupon_tests::wait_for_stable_rows(&store, &key_of(&event_b), Duration::from_secs(5)).await, 30);
    assert!(store.failed_events(&topic).await.unwrap().is_empty(), "nothing failed");
    consumer.stop().await.unwrap();
    assert_nothing_refused(&first);
    assert_nothing_refused(&second);
    operator_a.kill(&first);
    operator_b.kill(&second);
}

/// A principal without the Create right (topics pre-created with Strimzi's `KafkaTopic`, on
/// MSK or Confluent Cloud): behind a proxy that refuses CreateTopics, an event on a
/// pre-created topic is looked up, never created, and warms up as planned; an event whose
/// topic is missing cannot be provisioned, says so, and is still scaled for its window:
/// scaling needs only the spec and the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_create_right_a_pre_created_topic_is_used_and_scaling_never_waits_on_kafka() {
    let cluster = cluster().await;
    let broker_port = coupon_tests::free_port();
    let filter = KafkaFilter::start(format!("127.0.0.1:{broker_port}").parse().unwrap()).await;
    let _broker = OwnTansu::start_advertised(broker_port, &format!("tcp://{}", filter.addr())).await;
    let topic = unique("precreated");
    let admin = kafka(&filter.addr()).admin().unwrap();
    assert_eq!(admin.ensure_topic(&topic, 1, 1).await.unwrap(), coupon_core::kafka::TopicOutcome::Created);
    filter.refuse(CREATE_TOPICS);
    let created_before = filter.seen(CREATE_TOPICS);
    let operator = start_operator_with_kafka(&cluster, "operator-0", &filter.addr()).await;

    // Opens in 40 s, warm-up 30 s: warming up within seconds.
    let mut pre_created = coupon_event(&cluster, 10, SignedDuration::from_secs(40), SignedDuration::from_secs(300));
    pre_created.spec.topic = topic.clone();
    pre_created.spec.schedule.warm_up = Some("30s".into());
    let pre_created = cluster.create(&pre_created).await;
    let name = pre_created.metadata.name.clone().unwrap();
    let warming = wait_for_phase(&cluster, &name, Phase::WarmingUp).await;
    assert_eq!(condition(&warming, "Provisioned").unwrap().0, "True", "{:?}", warming.status);
    assert_eq!(cluster.replicas("coupon-api").await, Some(3), "warmed up");
    assert_eq!(filter.seen(CREATE_TOPICS), created_before, "an existing topic is never created");
    cluster.delete::<CouponEvent>(&name).await;
    wait_until_gone(&cluster, "the first event is gone", &name, Duration::from_secs(30)).await;

    // A missing topic cannot be created: not provisioned, and scaled all the same.
    let missing = cluster.create(&coupon_event(&cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(300))).await;
    let name = missing.metadata.name.clone().unwrap();
    let unavailable = wait_for_condition(&cluster, &name, "Ready", "False", "BackendUnavailable").await;
    let cluster_ref = &cluster;
    wait_until("scaled without its topic", Duration::from_secs(15), || async move {
        let replicas = (cluster_ref.replicas("coupon-api").await, cluster_ref.replicas("coupon-consumer").await);
        (replicas == (Some(3), Some(2))).then_some(())
    })
    .await;
    assert!(filter.seen(CREATE_TOPICS) > created_before, "the missing topic was asked for");
    assert!(condition(&unavailable, "Ready").is_some());
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}

/// An operator whose topics may hold 5 partitions in all (`MAX_PARTITIONS_TOTAL`): a first
/// event's new topic of 3 is created; a second event's new topic of 3 would make 6 and is
/// refused (`PartitionCapExceeded`), its topic never created; a third event on the first's
/// topic costs nothing more and opens. Admission caps one event's partitions; only the
/// operator sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_past_the_operators_partition_cap_is_refused_before_it_is_created() {
    use coupon_core::kafka::TopicLookup;
    let cluster = cluster().await;
    let operator = start_operator_capped(&cluster, "operator-0", 5).await;
    let admin = kafka(&kafka_brokers()).admin().unwrap();
    let window = |cluster| coupon_event(cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));

    let mut first = window(&cluster);
    first.spec.topic = unique("capped");
    first.spec.partitions = 3;
    let first = cluster.create(&first).await;
    wait_for_phase(&cluster, first.metadata.name.as_deref().unwrap(), Phase::Open).await;

    let mut second = window(&cluster);
    second.spec.topic = unique("past-the-cap");
    second.spec.partitions = 3;
    let second = cluster.create(&second).await;
    let refused = wait_for_condition(&cluster, second.metadata.name.as_deref().unwrap(), "Ready", "False", "PartitionCapExceeded").await;
    let said = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(said.contains("to 6, past its cap of 5"), "{said}");
    assert_eq!(admin.lookup(&second.spec.topic).await.unwrap(), TopicLookup::Missing, "the topic was never created");

    let mut third = window(&cluster);
    third.spec.topic = first.spec.topic.clone();
    third.spec.partitions = 3;
    let third = cluster.create(&third).await;
    wait_for_phase(&cluster, third.metadata.name.as_deref().unwrap(), Phase::Open).await;
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}
