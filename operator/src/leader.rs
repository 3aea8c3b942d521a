//! Leader election: of all operator instances (a replacement pod started while the old one
//! is stuck terminating, a second replica), only the holder of a `coordination.k8s.io` Lease
//! reconciles, so scales, statuses and Events have one writer. The Lease is kept by
//! `kube-lease-manager` (server-side apply, so two candidates cannot both take it).
//!
//! An instance that loses the Lease stops acting at once and returns `Lost`; `main` then
//! exits, and Kubernetes restarts it as a fresh candidate, the way controller-runtime does.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder, LeaseManagerError};

/// Where the Lease is and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per instance: the pod name.
    pub identity: String,
    /// How long a Lease stays valid after its holder's last renewal: the longest time an
    /// instance that died without letting go keeps the others waiting.
    pub lease_duration: Duration,
    /// How long before the Lease expires its holder renews it.
    pub renew_margin: Duration,
    /// True while this instance acts as the leader (turned false the moment it stops).
    pub leading: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeadershipError {
    #[error("leader election: {0}")]
    Lease(#[from] LeaseManagerError),
    #[error("lost the Lease {0}: another instance leads now")]
    Lost(String),
}

impl LeaderElection {
    /// Waits until this instance holds the Lease, then runs `work` for as long as it does.
    /// `work` ending (a shutdown signal) releases the Lease for the next instance at once;
    /// losing the Lease drops `work` where it is and returns `Lost`.
    pub async fn run<F: Future<Output = ()>>(&self, client: kube::Client, work: F) -> Result<(), LeadershipError> {
        let manager = LeaseManagerBuilder::new(client.clone(), &self.lease_name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(self.lease_duration.as_secs().max(2))
            .with_grace(self.renew_margin.as_secs().clamp(1, self.lease_duration.as_secs().max(2) - 1))
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
            .await?;
        let (mut leading, task) = manager.watch().await;
        tracing::info!(lease = %self.lease_name, identity = %self.identity, "waiting to lead");
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return Err(LeadershipError::Lost(self.lease_name.clone()));
            }
        }
        tracing::info!(lease = %self.lease_name, identity = %self.identity, "leading");
        self.leading.store(true, Ordering::SeqCst);
        let lost = async {
            loop {
                if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            () = work => Ok(()),
            () = lost => Err(LeadershipError::Lost(self.lease_name.clone())),
            () = self.watchdog(client) => Err(LeadershipError::Lost(self.lease_name.clone())),
        };
        self.leading.store(false, Ordering::SeqCst);
        // With no receiver left, the manager's task releases the Lease and ends; it may be
        // backing off after failed renewals, so it gets the renewal margin, then is stopped
        // (the Lease then expires on its own).
        drop(leading);
        let abort = task.abort_handle();
        match tokio::time::timeout(self.renew_margin, task).await {
            Ok(Ok(Ok(_))) => tracing::info!(lease = %self.lease_name, "Lease released"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not release the Lease; the next instance waits for it to expire"),
            Ok(Err(error)) => tracing::warn!(%error, "leader election task failed"),
            Err(_) => {
                abort.abort();
                tracing::warn!("could not release the Lease in time; the next instance waits for it to expire");
            }
        }
        if let Err(error) = &outcome {
            tracing::error!(%error, "stopping");
        }
        outcome
    }

    /// Returns once this instance can no longer be sure it holds the Lease: another holder
    /// is recorded, or no renewal of its own was seen for longer than a renewal period and
    /// half the margin (the API server unreachable, a renewal stuck). The lease manager only
    /// logs such failures and keeps going, while another instance takes the Lease once it
    /// expires; stepping down before that keeps the writers to one.
    async fn watchdog(&self, client: kube::Client) {
        let leases: kube::Api<Lease> = kube::Api::namespaced(client, &self.namespace);
        let renewal_period = self.lease_duration.saturating_sub(self.renew_margin);
        // A renewal is seen at most one poll after it happened; the margin's quarter covers
        // that and a late renewal, and leaves three quarters before the Lease can expire.
        let patience = renewal_period + self.renew_margin / 4;
        let poll = (self.renew_margin / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let mut last_renewal_seen = tokio::time::Instant::now();
        let mut last_renew_time = None;
        loop {
            tokio::time::sleep(poll).await;
            if let Ok(Ok(lease)) = tokio::time::timeout(poll, leases.get(&self.lease_name)).await {
                let spec = lease.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                    tracing::warn!(holder = ?spec.holder_identity, "the Lease names another holder");
                    return;
                }
                let renew_time = spec.renew_time.map(|t| t.0);
                if renew_time != last_renew_time {
                    last_renew_time = renew_time;
                    last_renewal_seen = tokio::time::Instant::now();
                }
            }
            if last_renewal_seen.elapsed() > patience {
                tracing::warn!(since = ?last_renewal_seen.elapsed(), "the Lease was not renewed in time");
                return;
            }
        }
    }
}
