//! Which namespaces an operator that watches them all acts in, against the local control
//! plane's real API server: with `NAMESPACE_SELECTOR` only those whose labels match, so a
//! tenant whose namespace lacks them cannot make it create topics, Redis keys or replicas.

use std::time::Duration;

use coupon_core::kafka::TopicLookup;
use coupon_operator::crd::{CouponEvent, Phase};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::local_cluster::NamespacedCluster;
use coupon_tests::{kafka, kafka_brokers, unique, wait_until};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::SignedDuration;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// Sets (`Some`) or removes (`None`) the label `key` on `cluster`'s namespace.
async fn label(cluster: &NamespacedCluster, key: &str, value: Option<&str>) {
    let namespaces = Api::<Namespace>::all(cluster.cluster.admin.clone());
    let patch = json!({"metadata": {"labels": {key: value}}});
    namespaces.patch(&cluster.namespace, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("label the namespace");
}

/// No operator wrote the event's status: it is the CRD's default (generation 0 observed, no
/// condition).
fn never_reported(event: &CouponEvent) -> bool {
    event.status.as_ref().is_none_or(|s| s.observed_generation == Some(0) && s.conditions.is_empty())
}

/// The limit in the event's status: what the operator last accepted.
async fn accepted_limit(cluster: &NamespacedCluster, name: &str) -> Option<i64> {
    cluster.get::<CouponEvent>(name).await?.status?.last_accepted_spec.map(|spec| spec.limit)
}

/// One operator watches every namespace with a selector of a label of this test's own
/// (other tests' namespaces run beside it and must not be touched).
/// - An open event in a namespace without the label gets nothing: no finalizer, no status,
///   no topic, no request of the operator that writes in that namespace; one in a labelled
///   namespace opens.
/// - Labelling the first namespace hands its event to the operator at once (the namespace
///   watch triggers it: an ignored event is never requeued by the clock).
/// - Unlabelling the second leaves its event alone: an edit of its limit is not taken up,
///   while the same edit in the now labelled namespace, made after it, is.
/// - Labelled again, its deletion is carried out (the finalizer the operator put there
///   removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_with_a_namespace_selector_acts_only_in_namespaces_with_the_labels() {
    let key = format!("tenancy.test/{}", unique("t"));
    let (home, outside, inside) = (cluster().await, cluster().await, cluster().await);
    label(&inside, &key, Some("true")).await;
    let operator = start_operator_selecting(&home, "operator-0", &format!("{key}=true")).await;
    let window = |cluster| coupon_event(cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));

    let left_out = outside.create(&window(&outside)).await;
    let taken = inside.create(&window(&inside)).await;
    let (left_out_name, taken_name) = (left_out.name_any(), taken.name_any());
    // Created after the other and reconciled after it: by the time it is open, the other
    // has had its look.
    wait_for_phase(&inside, &taken_name, Phase::Open).await;
    let untouched = outside.get::<CouponEvent>(&left_out_name).await.unwrap();
    assert!(never_reported(&untouched), "no status on an event outside the selection: {:?}", untouched.status);
    assert!(untouched.finalizers().is_empty(), "no finalizer: {:?}", untouched.finalizers());
    let admin = kafka(&kafka_brokers()).admin().unwrap();
    assert_eq!(admin.lookup(&left_out.spec.topic).await.unwrap(), TopicLookup::Missing, "no topic for it");
    let in_outside = format!("/namespaces/{}/", outside.namespace);
    let writes: Vec<_> = home.requests().into_iter().filter(|r| r.is_write() && r.path.contains(&in_outside)).collect();
    assert!(writes.is_empty(), "the operator wrote in a namespace outside its selection: {writes:?}");
    assert_eq!(outside.replicas("coupon-api").await, Some(1), "its Deployments are not scaled");

    // The labels move: the outside namespace is selected, the inside one no longer. Both go
    // through the one namespace watch in order, so once the first namespace's event opens,
    // the operator knows the second left.
    label(&inside, &key, None).await;
    label(&outside, &key, Some("true")).await;
    wait_for_phase_within(&outside, &left_out_name, Phase::Open, Duration::from_secs(30)).await;

    inside.patch::<CouponEvent>(&taken_name, json!({"spec": {"limit": 20}})).await;
    outside.patch::<CouponEvent>(&left_out_name, json!({"spec": {"limit": 20}})).await;
    wait_until("the edit in the selected namespace taken up", Duration::from_secs(30), || async {
        (accepted_limit(&outside, &left_out_name).await == Some(20)).then_some(())
    })
    .await;
    assert_eq!(accepted_limit(&inside, &taken_name).await, Some(10), "an edit outside the selection was taken up");

    // Back in the selection, its deletion is carried out.
    label(&inside, &key, Some("true")).await;
    inside.delete::<CouponEvent>(&taken_name).await;
    wait_until("the event let go", Duration::from_secs(60), || async {
        inside.get::<CouponEvent>(&taken_name).await.is_none().then_some(())
    })
    .await;
    assert_nothing_refused(&home);
    operator.kill(&home);
}

/// Events there before the operator starts (the upgrade that brings the selector): its
/// first lists of events and of namespaces race, and a namespace lands in its cache only
/// once the list is complete. The labelled namespace's event opens all the same; the other
/// is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_there_before_the_operator_starts_are_sorted_by_their_namespaces_labels() {
    let key = format!("tenancy.test/{}", unique("t"));
    let (home, outside, inside) = (cluster().await, cluster().await, cluster().await);
    label(&inside, &key, Some("true")).await;
    let window = |cluster| coupon_event(cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    let left_out = outside.create(&window(&outside)).await;
    let taken = inside.create(&window(&inside)).await;
    let operator = start_operator_selecting(&home, "operator-0", &format!("{key}=true")).await;
    wait_for_phase(&inside, &taken.name_any(), Phase::Open).await;
    let untouched = outside.get::<CouponEvent>(&left_out.name_any()).await.unwrap();
    assert!(never_reported(&untouched) && untouched.finalizers().is_empty(), "left alone: {:?}", untouched.status);
    assert_nothing_refused(&home);
    operator.kill(&home);
}

/// A selector the API server cannot parse is refused at start with what was wrong (the
/// operator's `run` exits on it), not retried by a watch for ever; so is an operator without
/// the right to list namespaces; a valid selector with that right passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_namespace_selector_is_refused_at_start() {
    use coupon_operator::controller::namespaces::check_selector;
    let cluster = coupon_tests::local_cluster::LocalCluster::connect().await;
    let said = check_selector(cluster.admin.clone(), "tenant in (a,").await.expect_err("a malformed selector passed");
    assert!(said.contains("NAMESPACE_SELECTOR") && said.contains("tenant in (a,"), "{said}");
    check_selector(cluster.admin.clone(), "coupons.fcfs.dev/tenant=true,tier!=free").await.expect("a valid selector");
    // A namespace-scoped operator's account: no rule on listing namespaces.
    let scoped = coupon_tests::local_cluster::operator::cluster().await;
    let client = scoped.client("operator-0").await;
    let said = check_selector(client, "coupons.fcfs.dev/tenant=true").await.expect_err("an operator that cannot list namespaces passed");
    assert!(said.contains("list and watch namespaces"), "{said}");
}
