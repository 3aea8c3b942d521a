//! How the real operator scales, against the local control plane's real API server (its
//! Deployment and ReplicaSet controllers, no node for these Pods: they never turn Ready) and
//! real Redis and Kafka: the api's readiness at the start, hundreds of events opening at once
//! on a slow control plane, autoscalers and a GitOps tool resetting replicas.

use std::time::{Duration, Instant};

use coupon_operator::crd::{CouponEvent, Phase};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::wait_until;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

/// Pods that never turn Ready (no node takes them): a minute before the start the api is
/// short of its replicas, and the event says so, `Scaling=False` (`NotReady`) and one
/// Warning, while the warm-up of a minute is taken with a `WarmUp=False` (`ShortWarmUp`)
/// condition and its Warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_short_of_available_replicas_before_the_start_is_reported_not_ready() {
    let cluster = cluster().await;
    let operator = start_operator(&cluster, "operator-0").await;
    // Warm-up (1 min) begins in 10 s; the readiness check a minute before the start too.
    let event = cluster.create(&coupon_event(&cluster, 10, SignedDuration::from_secs(70), SignedDuration::from_secs(300))).await;
    let name = event.metadata.name.clone().unwrap();
    let scheduled = wait_for_phase(&cluster, &name, Phase::Scheduled).await;
    assert_eq!(condition(&scheduled, "WarmUp"), Some(("False".into(), "ShortWarmUp".into())));
    assert_eq!(condition(&scheduled, "Scaling").unwrap().0, "True", "not judged before the warm-up");
    let short = wait_for_condition_within(&cluster, &name, "Scaling", "False", "NotReady", Duration::from_secs(40)).await;
    assert_eq!(short.status.as_ref().unwrap().phase, Phase::WarmingUp, "reported before the start");
    let message = short.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Scaling").unwrap().message;
    assert!(message.contains("coupon-api has 0 of 3"), "{message}");
    // Reported once, not on every look.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(warnings(&cluster, "NotReady").await, 1);
    assert_eq!(warnings(&cluster, "ShortWarmUp").await, 1);
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}

/// An event whose window is open while its api has no available replica is counted as open
/// and not ready to sell (`coupon_operator_event_open_unready`, what the alert on an event
/// open but not ready reads); paused, it is not (a pause is on purpose); deleted, it keeps no
/// series; and an operator that stops acting (leadership lost, killed) keeps none either,
/// though a standby goes on serving its metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_event_short_of_replicas_is_exported_not_ready_while_it_counts() {
    let cluster = cluster().await;
    let operator = start_operator(&cluster, "operator-0").await;
    let metrics = operator.metrics.clone();
    let series = |name: &str| format!("coupon_operator_event_open_unready{{event=\"{}/{name}\"}}", cluster.namespace);
    let exported = |series: String, value: Option<u8>| {
        let metrics = metrics.clone();
        async move {
            let text = metrics.encode();
            let found = match value {
                Some(value) => text.contains(&format!("{series} {value}")),
                None => !text.contains(&series),
            };
            found.then_some(())
        }
    };
    let open = || coupon_event(&cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    let name = cluster.create(&open()).await.metadata.name.unwrap();
    wait_for_condition(&cluster, &name, "Scaling", "False", "NotReady").await;
    wait_until("open and not ready", Duration::from_secs(20), || exported(series(&name), Some(1))).await;
    cluster.patch::<CouponEvent>(&name, json!({"spec": {"paused": true}})).await;
    wait_until("paused: not counted", Duration::from_secs(20), || exported(series(&name), Some(0))).await;
    cluster.patch::<CouponEvent>(&name, json!({"spec": {"paused": false}})).await;
    wait_until("resumed: counted again", Duration::from_secs(20), || exported(series(&name), Some(1))).await;
    cluster.delete::<CouponEvent>(&name).await;
    wait_until_gone(&cluster, "couponevents", &name, Duration::from_secs(60)).await;
    wait_until("deleted: no series", Duration::from_secs(10), || exported(series(&name), None)).await;

    let other = cluster.create(&open()).await.metadata.name.unwrap();
    wait_until("another open and not ready", Duration::from_secs(40), || exported(series(&other), Some(1))).await;
    let metrics = operator.metrics.clone();
    operator.kill(&cluster);
    wait_until("an operator that stopped keeps no series", Duration::from_secs(10), || {
        let metrics = metrics.clone();
        async move { (!metrics.encode().contains("coupon_operator_event_open_unready{")).then_some(()) }
    })
    .await;
}

/// Two hundred events open at the same instant, each with an api Deployment of its own, on
/// a control plane that adds 50 ms to every call: every one of them is scaled before its
/// start (warm-up 30 s). One process-wide lock around a few calls per event took about a
/// minute for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_events_opening_together_on_a_slow_control_plane_are_all_scaled_before_the_start() {
    const EVENTS: usize = 200;
    let cluster = cluster().await;
    let start = Timestamp::from_second(Timestamp::now().as_second() + 100).unwrap();
    let topic = coupon_tests::unique("crowd");
    let mut names = Vec::new();
    for i in 0..EVENTS {
        let api = format!("api-{i}");
        cluster.create(&deployment(&api, 0)).await;
        let mut event = coupon_event(&cluster, 10, SignedDuration::from_secs(0), SignedDuration::from_secs(1));
        event.spec.schedule.start = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(start));
        event.spec.schedule.end = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(start + SignedDuration::from_mins(10)));
        event.spec.schedule.warm_up = Some("30s".into());
        event.spec.topic = topic.clone();
        event.spec.api.deployment = api;
        event.spec.api.replicas = 1;
        event.spec.api.idle_replicas = Some(0);
        event.spec.consumer.replicas = 1;
        names.push(cluster.create(&event).await.metadata.name.unwrap());
    }
    let operator = start_operator_slowed(&cluster, "operator-0", Duration::from_millis(50)).await;
    let warm_up = start - SignedDuration::from_secs(30);
    assert!(Timestamp::now() < warm_up, "the events were created before their warm-up");
    let cluster_ref = &cluster;
    // Every one provisioned before its warm-up.
    wait_until("all events scheduled", Duration::from_secs(60), || async move {
        let events = cluster_ref.list::<CouponEvent>().await;
        let scheduled = events.iter().filter(|e| e.status.as_ref().is_some_and(|s| s.phase == Phase::Scheduled)).count();
        (scheduled == EVENTS).then_some(())
    })
    .await;
    // Then all cross into the warm-up together, and are scaled before the start.
    let crossing = Instant::now();
    let scaled = || async move {
        let is_scaled = |d: &&Deployment| {
            d.metadata.name.as_deref().is_some_and(|n| n.starts_with("api-")) && d.spec.as_ref().and_then(|s| s.replicas) == Some(1)
        };
        cluster_ref.list::<Deployment>().await.iter().filter(is_scaled).count()
    };
    let mut last = usize::MAX;
    loop {
        let now_scaled = scaled().await;
        if now_scaled != last {
            println!("{} s after the warm-up began: {now_scaled} of {EVENTS} scaled", Timestamp::now().duration_since(warm_up).as_secs());
            last = now_scaled;
        }
        if now_scaled == EVENTS || Timestamp::now() > start + SignedDuration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last, EVENTS, "every api scaled");
    let all_scaled = Timestamp::now();
    println!(
        "{EVENTS} events scaled {:?} after the warm-up began ({:?} of waiting in all)",
        all_scaled.duration_since(warm_up),
        crossing.elapsed()
    );
    assert!(all_scaled < start, "every api scaled before the start ({all_scaled} vs {start})");
    // The status follows the scaling (scale first, then provision and report): every event
    // reports its warm-up within a few seconds, well before its start.
    wait_until("every event reports its warm-up", Duration::from_secs(10), || async move {
        let events = cluster_ref.list::<CouponEvent>().await;
        let warming = events.iter().filter(|e| e.status.as_ref().is_some_and(|s| s.phase == Phase::WarmingUp)).count();
        (warming == EVENTS).then_some(())
    })
    .await;
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}

/// A Deployment under a HorizontalPodAutoscaler: its replicas are the autoscaler's, so the
/// operator raises the autoscaler's minimum for the window (and its maximum when below) and
/// puts both back after; it never writes the Deployment's scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_deployment_gets_its_minimum_held_for_the_window_and_restored_after() {
    let cluster = cluster().await;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "api-hpa"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "coupon-api"}, "minReplicas": 1, "maxReplicas": 2}
    }))
    .unwrap();
    cluster.create(&hpa).await;
    let operator = start_operator(&cluster, "operator-0").await;
    let event = cluster.create(&coupon_event(&cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(20))).await;
    let name = event.metadata.name.clone().unwrap();
    let cluster_ref = &cluster;
    let limits = || async move {
        let hpa = cluster_ref.get::<HorizontalPodAutoscaler>("api-hpa").await.unwrap();
        let spec = hpa.spec.unwrap();
        (spec.min_replicas, spec.max_replicas, hpa.metadata.annotations.unwrap_or_default())
    };
    wait_until("the minimum raised", Duration::from_secs(15), || async move {
        let (min, max, annotations) = limits().await;
        (min == Some(3) && max == 3 && annotations.get("coupons.fcfs.dev/original-min-replicas").map(String::as_str) == Some("1"))
            .then_some(())
    })
    .await;
    let open = wait_for_condition(&cluster, &name, "Scaling", "True", "Scaled").await;
    assert!(open.status.unwrap().conditions.iter().any(|c| c.message.contains("api-hpa")), "the condition names the autoscaler");
    // After the end (no cool-down), the original limits come back and the record goes.
    wait_until("the minimum restored", Duration::from_secs(40), || async move {
        let (min, max, annotations) = limits().await;
        (min == Some(1) && max == 2 && !annotations.contains_key("coupons.fcfs.dev/original-min-replicas")).then_some(())
    })
    .await;
    let api_scales = scale_writes(&cluster.requests()).into_iter().filter(|r| r.path.contains("/coupon-api/")).count();
    assert_eq!(api_scales, 0, "the Deployment's scale is the autoscaler's");
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}

/// Someone else (a GitOps tool's self-heal) keeps setting the consumer's replicas back: the
/// operator says so, `Scaling=False` (`Contended`) and one Warning, and stops writing them
/// for a while instead of patching on every look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reset_by_someone_else_are_reported_contended_instead_of_patched_every_few_seconds() {
    let cluster = cluster().await;
    let operator = start_operator(&cluster, "operator-0").await;
    let event = cluster.create(&coupon_event(&cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(300))).await;
    let name = event.metadata.name.clone().unwrap();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    // The self-heal: every half second, the consumer back to 0.
    let healing = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            loop {
                if cluster.replicas("coupon-consumer").await != Some(0) {
                    cluster.patch::<Deployment>("coupon-consumer", json!({ "spec": { "replicas": 0 } })).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    wait_for_condition_within(&cluster, &name, "Scaling", "False", "Contended", Duration::from_secs(30)).await;
    let contended_at = Instant::now();
    let writes_then = consumer_scale_writes(&cluster);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let written_since = consumer_scale_writes(&cluster) - writes_then;
    println!("consumer scale writes: {writes_then} until Contended, {written_since} in the {:?} after", contended_at.elapsed());
    assert_eq!(written_since, 0, "left alone once contended");
    assert!(writes_then <= 3, "{writes_then} writes before giving up");
    assert_eq!(warnings(&cluster, "Contended").await, 1);
    healing.abort();
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}

fn consumer_scale_writes(cluster: &coupon_tests::local_cluster::NamespacedCluster) -> usize {
    scale_writes(&cluster.requests()).into_iter().filter(|r| r.path.contains("/coupon-consumer/")).count()
}

/// An autoscaler KEDA made for a ScaledObject: KEDA would put its own minimum back on the
/// autoscaler, so the ScaledObject's `minReplicaCount` is raised for the window and restored
/// after. (The ScaledObject CRD here is a stand-in for KEDA's: only its kind and its fields
/// matter to the operator; no KEDA runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keda_scaled_object_gets_its_minimum_held_for_the_window_and_restored_after() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let cluster = cluster().await;
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "scaledobjects.keda.sh"},
        "spec": {"group": "keda.sh", "scope": "Namespaced",
                 "names": {"plural": "scaledobjects", "singular": "scaledobject", "kind": "ScaledObject", "listKind": "ScaledObjectList"},
                 "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap();
    cluster.cluster.apply_crd(&crd).await;
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"), "scaledobjects");
    let scaled_objects: kube::Api<DynamicObject> = kube::Api::namespaced_with(cluster.cluster.admin.clone(), &cluster.namespace, &resource);
    let mut scaled_object = DynamicObject::new("api-scaler", &resource);
    scaled_object.data = json!({"spec": {"scaleTargetRef": {"name": "coupon-api"}, "minReplicaCount": 0, "maxReplicaCount": 2}});
    let scaled_object = scaled_objects.create(&Default::default(), &scaled_object).await.unwrap();
    // The autoscaler KEDA makes for it, owned by it.
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "keda-hpa-api-scaler", "ownerReferences": [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                     "name": "api-scaler", "uid": scaled_object.metadata.uid}]},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "coupon-api"}, "minReplicas": 1, "maxReplicas": 2}
    }))
    .unwrap();
    cluster.create(&hpa).await;
    let operator = start_operator(&cluster, "operator-0").await;
    cluster.create(&coupon_event(&cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(20))).await;
    let scaled_objects = &scaled_objects;
    let limits = || async move {
        let object = scaled_objects.get("api-scaler").await.unwrap();
        (
            object.data["spec"]["minReplicaCount"].as_i64(),
            object.data["spec"]["maxReplicaCount"].as_i64(),
            object.metadata.annotations.unwrap_or_default(),
        )
    };
    wait_until("the ScaledObject's minimum raised", Duration::from_secs(15), || async move {
        let (min, max, annotations) = limits().await;
        (min == Some(3) && max == Some(3) && annotations.get("coupons.fcfs.dev/original-min-replicas").map(String::as_str) == Some("0"))
            .then_some(())
    })
    .await;
    let hpa = cluster.get::<HorizontalPodAutoscaler>("keda-hpa-api-scaler").await.unwrap();
    assert_eq!(hpa.spec.unwrap().min_replicas, Some(1), "KEDA's autoscaler itself is left to KEDA");
    wait_until("the ScaledObject's minimum restored", Duration::from_secs(40), || async move {
        let (min, max, annotations) = limits().await;
        (min == Some(0) && max == Some(2) && annotations.is_empty()).then_some(())
    })
    .await;
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}
