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
        let (duration, margin) = self.seconds();
        let manager = LeaseManagerBuilder::new(client.clone(), &self.lease_name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(duration)
            .with_grace(margin)
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
        match tokio::time::timeout(Duration::from_secs(margin), task).await {
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

    /// The lease's duration and renewal margin in whole seconds, as the lease manager uses
    /// them (it takes seconds; the margin is kept below the duration).
    fn seconds(&self) -> (u64, u64) {
        let duration = self.lease_duration.as_secs().max(2);
        (duration, self.renew_margin.as_secs().clamp(1, duration - 1))
    }

    /// Returns once this instance can no longer be sure it holds the Lease: another holder
    /// is recorded, or the Lease may be about to expire (the API server out of reach, a
    /// renewal stuck or failing). The lease manager only logs failed renewals and retries,
    /// while another instance takes the Lease once it expires; stepping down before that
    /// keeps the writers to one.
    ///
    /// Expiry is bounded from local observations only: a renewal seen now happened after the
    /// previous look was sent, so the Lease lasts at least until that moment plus its
    /// duration. Half the margin is kept in hand (for the look itself and clock rates); the
    /// other half is the manager's time to retry a failed renewal.
    async fn watchdog(&self, client: kube::Client) {
        let leases: kube::Api<Lease> = kube::Api::namespaced(client, &self.namespace);
        let (duration, margin) = self.seconds();
        let (duration, margin) = (Duration::from_secs(duration), Duration::from_secs(margin));
        let kept_in_hand = margin / 2;
        let poll = (margin / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let started = tokio::time::Instant::now();
        let mut valid_until = started + duration - kept_in_hand;
        let mut previous_look = started;
        let mut last_renew_time = None;
        loop {
            tokio::time::sleep(poll).await;
            let look = tokio::time::Instant::now();
            if let Ok(Ok(lease)) = tokio::time::timeout(kept_in_hand, leases.get(&self.lease_name)).await {
                let spec = lease.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                    tracing::warn!(holder = ?spec.holder_identity, "the Lease names another holder");
                    return;
                }
                let renew_time = spec.renew_time.map(|t| t.0);
                if renew_time != last_renew_time {
                    if last_renew_time.is_some() {
                        valid_until = previous_look + duration - kept_in_hand;
                    }
                    last_renew_time = renew_time;
                }
                previous_look = look;
            }
            if tokio::time::Instant::now() >= valid_until {
                tracing::warn!("the Lease was not renewed in time and may expire; stepping down");
                return;
            }
        }
    }
}
