//! The operator's readiness: not whether it leads (a Ready standby is what lets a disruption
//! budget keep one instance while the other is moved), but whether it could act: the
//! CouponEvent CRD is installed and its RBAC lets it list them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::api::ListParams;
use kube::{Api, Client};

use crate::crd::CouponEvent;

/// Turns `ready` true once the CouponEvents this instance manages can be listed, retrying
/// with backoff and saying why meanwhile (a missing CRD, an RBAC refusal).
pub async fn wait_until_listable(client: Client, namespace: Option<String>, ready: Arc<AtomicBool>) {
    let events: Api<CouponEvent> = match &namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let mut wait = Duration::from_millis(200);
    loop {
        match events.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {
                if !ready.swap(true, Ordering::Relaxed) {
                    tracing::info!("CouponEvents can be listed; ready");
                }
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot list CouponEvents; not ready"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}
