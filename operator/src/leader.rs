//! Leader election: of all operator instances (a replacement pod started while the old one
//! is stuck terminating, a second replica), only the holder of a `coordination.k8s.io` Lease
//! reconciles, so scales, statuses and Events have one writer. The Lease is kept by
//! `kube-lease-manager` (server-side apply, so two candidates cannot both take it).
//!
//! An instance that loses the Lease stops acting at once and returns `Lost`; `main` then
//! exits, and Kubernetes restarts it as a fresh candidate, the way controller-runtime does.

use std::future::Future;
use std::time::Duration;

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
        let manager = LeaseManagerBuilder::new(client, &self.lease_name)
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
        };
        // With no receiver left, the manager's task releases the Lease and ends.
        drop(leading);
        match task.await {
            Ok(Err(error)) => tracing::warn!(%error, "could not release the Lease; the next instance waits for it to expire"),
            Err(error) => tracing::warn!(%error, "leader election task failed"),
            Ok(Ok(_)) => tracing::info!(lease = %self.lease_name, "Lease released"),
        }
        if let Err(error) = &outcome {
            tracing::error!(%error, "stopping");
        }
        outcome
    }
}
