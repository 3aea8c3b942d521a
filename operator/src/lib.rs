//! `coupon-operator`: the CouponEvent controller. Decisions live in pure modules
//! (`schedule`, `status`, `lifecycle`); `controller` only reads, calls them and writes differences.

pub mod backend;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod identity;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod occurrences;
pub(crate) mod progress;
pub mod readiness;
pub mod schedule;
pub mod status;

/// The CRD as YAML, exactly as `coupon-operator crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&crd::CouponEvent::crd()).expect("CRD serializes")
}
