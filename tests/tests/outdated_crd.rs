//! An operator newer than the installed CRD (Helm never upgrades `crds/`): the API server
//! prunes the status fields the old schema lacks. The operator must not take its own sale for
//! a stranger's and hand out the limit a second time; it says the CRD is outdated and stops
//! acting, and goes on by itself once the new CRD is applied.
//!
//! A test binary of its own: it changes the cluster-wide CRD, which the tests of other
//! binaries (run one binary at a time) install again before they start.

use std::time::Duration;

use coupon_operator::crd::{CouponEvent, Phase};
use coupon_operator::identity::{CRD_OUTDATED, INCARNATION_ANNOTATION};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::local_cluster::NamespacedCluster;
use coupon_tests::{kafka_brokers, wait_until, InProcessApi};
use k8s_openapi::jiff::SignedDuration;
use kube::CustomResourceExt;
use serde_json::json;

/// This release's CRD without `status.incarnation`, as a CRD from before that field.
fn crd_without_incarnation() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = serde_json::to_value(CouponEvent::crd()).unwrap();
    let status = crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties").expect("a status schema");
    assert!(status.as_object_mut().unwrap().remove("incarnation").is_some(), "the status schema has incarnation");
    serde_json::from_value(crd).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_that_prunes_the_incarnation_never_gets_the_limit_handed_out_twice() {
    let cluster = NamespacedCluster::new("old-crd").await;
    cluster.create(&deployment("coupon-api", 1)).await;
    cluster.create(&deployment("coupon-consumer", 0)).await;
    cluster.cluster.apply_crd(&crd_without_incarnation()).await;
    let operator = start_operator(&cluster, "operator-0").await;
    let event = cluster.create(&coupon_event(&cluster, 5, SignedDuration::from_secs(-1), SignedDuration::from_secs(300))).await;
    let name = event.metadata.name.clone().unwrap();
    let uid = event.metadata.uid.clone().unwrap();

    // Provisioned and open; the server keeps no incarnation in its status.
    wait_for_phase(&cluster, &name, Phase::Open).await;
    let api = InProcessApi::start(&cluster.namespace, &kafka_brokers()).await;
    let first = apply_all(&api, &cluster.namespace, &name, (1..=8).map(|u| format!("user-{u}"))).await;
    assert_eq!(first, vec![1, 2, 3, 4, 5], "the limit, once");

    // Its coupons reach SQL (so nothing would hold back a sale started again from zero).
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let consumer = coupon_tests::InProcessConsumer::start(&database, &[event.spec.topic.as_str()], &kafka_brokers());
    coupon_tests::wait_for_rows(&store, &key_of(&event), 5, Duration::from_secs(30)).await;

    // Through several reconciles (an edit, the requeues), nobody gets a sixth coupon: the
    // sale is neither closed as a stranger's nor provisioned again from zero.
    cluster.patch::<CouponEvent>(&name, json!({ "spec": { "api": { "replicas": 4 } } })).await;
    let watching = std::time::Instant::now();
    let mut n = 8;
    while watching.elapsed() < Duration::from_secs(20) {
        n += 1;
        let again = apply_all(&api, &cluster.namespace, &name, [format!("user-{n}")]).await;
        assert!(again.is_empty(), "a coupon handed out a second time: slot {again:?} to user-{n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(warnings(&cluster, "PreviousEventClosed").await, 0, "its own sale taken for a stranger's");

    // It says why it stopped acting, once.
    let outdated = wait_for_condition(&cluster, &name, "Ready", "False", CRD_OUTDATED).await;
    assert_eq!(outdated.status.as_ref().unwrap().incarnation, None, "the server pruned it");
    let annotated = outdated.metadata.annotations.as_ref().and_then(|a| a.get(INCARNATION_ANNOTATION)).cloned();
    assert_eq!(annotated.as_deref(), Some(uid.as_str()), "who the sale is, kept in metadata");
    assert_eq!(warnings(&cluster, CRD_OUTDATED).await, 1, "one Warning");
    assert_eq!(cluster.replicas("coupon-api").await, Some(3), "the edit is not acted on while the CRD is outdated");

    // Its record edited by hand (a forged annotation, as `kubectl annotate --overwrite` or a
    // manifest copied from another object would leave it): still nobody gets a sixth coupon,
    // and the record is written back from what Redis knows.
    cluster.patch::<CouponEvent>(&name, json!({ "metadata": { "annotations": { INCARNATION_ANNOTATION: "forged" } } })).await;
    cluster.patch::<CouponEvent>(&name, json!({ "spec": { "api": { "replicas": 5 } } })).await;
    let watching = std::time::Instant::now();
    while watching.elapsed() < Duration::from_secs(12) {
        n += 1;
        let again = apply_all(&api, &cluster.namespace, &name, [format!("user-{n}")]).await;
        assert!(again.is_empty(), "a coupon handed out a second time after the annotation was forged: slot {again:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let repaired = cluster.get::<CouponEvent>(&name).await.unwrap();
    let annotated = repaired.metadata.annotations.as_ref().and_then(|a| a.get(INCARNATION_ANNOTATION)).cloned();
    assert_eq!(annotated.as_deref(), Some(uid.as_str()), "the record written back from Redis");
    assert_eq!(warnings(&cluster, "PreviousEventClosed").await, 0, "its own sale taken for a stranger's");

    // The new CRD applied: the operator goes on by itself with the same sale.
    cluster.cluster.install_crd().await;
    let (cluster_ref, name_ref) = (&cluster, &name);
    let back = wait_until("the event ready again", Duration::from_secs(60), || async move {
        cluster_ref.get::<CouponEvent>(name_ref).await.filter(|e| {
            e.status
                .as_ref()
                .is_some_and(|s| s.incarnation.is_some() && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
    .await;
    let status = back.status.unwrap();
    assert_eq!((status.incarnation.as_deref(), status.issued, status.phase), (Some(uid.as_str()), 5, Phase::SoldOut));
    assert_eq!(store.count_coupons(&key_of(&event)).await.unwrap(), 5, "five rows, of this sale");
    consumer.stop().await.unwrap();
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}
