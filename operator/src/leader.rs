//! Leader election: of all operator instances (two replicas by default, a replacement pod
//! started while the old one is stuck terminating), only the holder of a
//! `coordination.k8s.io` Lease reconciles, so scales, statuses and Events have one writer.
//!
//! The algorithm is client-go's (`tools/leaderelection`), written here because the crates at
//! hand judge expiry by the holder's `renewTime` against the local wall clock: a node whose
//! clock runs ahead takes a Lease that is still held. Here:
//! - a candidate judges expiry only by its own monotonic clock: a Lease is free once its
//!   record has not changed for `lease_duration` since this process last saw it change;
//! - every write carries the `resourceVersion` it was decided on, so of two candidates that
//!   both saw the Lease free, one wins and the other gets 409;
//! - the holder counts its Lease from when it *sent* its last successful renewal (no
//!   candidate can have seen that renewal earlier) and stops acting `renew_margin` before the
//!   Lease could expire, keeping that margin in hand for clock rates and requests in flight.
//!
//! An instance that loses the Lease stops acting at once and becomes a candidate again in the
//! same process: its caches and connections stay warm, and a standby stays Ready.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio::time::Instant;

/// Where the Lease is and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per instance: the pod name.
    pub identity: String,
    /// How long a Lease stays valid after its record last changed: the longest time an
    /// instance that died without letting go keeps the others waiting.
    pub lease_duration: Duration,
    /// How long before its Lease could expire a holder that failed to renew stops acting.
    pub renew_margin: Duration,
    /// True while this instance acts as the leader (turned false the moment it stops).
    pub leading: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeadershipError {
    #[error("leader election: Lease {lease}: {source}")]
    Lease {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the Lease {0}: another instance leads now")]
    Lost(String),
}

/// What a candidate last saw of the Lease, and when (by this process' clock).
struct Observed {
    record: Option<LeaseSpec>,
    at: Instant,
}

impl LeaderElection {
    /// Runs `work()` whenever this instance holds the Lease, until a `work` ends by itself
    /// (its shutdown signal) or `shutdown` completes while waiting to lead. A `work` ending
    /// releases the Lease for the next instance at once; losing the Lease drops `work` where
    /// it is and makes this instance a candidate again.
    pub async fn run<W, F>(&self, client: kube::Client, mut work: W, shutdown: impl Future<Output = ()>) -> Result<(), LeadershipError>
    where
        W: FnMut() -> F,
        F: Future<Output = ()>,
    {
        let leases: Api<Lease> = Api::namespaced(client, &self.namespace);
        tokio::pin!(shutdown);
        loop {
            tracing::info!(lease = %self.lease_name, identity = %self.identity, "waiting to lead");
            let mut held = tokio::select! {
                held = self.acquire(&leases) => held,
                () = &mut shutdown => return Ok(()),
            };
            tracing::info!(lease = %self.lease_name, identity = %self.identity, "leading");
            self.leading.store(true, Ordering::SeqCst);
            let lost = tokio::select! {
                () = work() => None,
                lost = self.keep(&leases, &mut held) => Some(lost),
            };
            self.leading.store(false, Ordering::SeqCst);
            match lost {
                None => {
                    self.release(&leases, held.0).await;
                    return Ok(());
                }
                Some(error) => tracing::error!(%error, "stopped acting; a candidate again"),
            }
        }
    }

    /// Retries between looks at the Lease: often enough that a hand-over takes little more
    /// than the Lease's duration, seldom enough to be nothing for the API server.
    fn retry_period(&self) -> Duration {
        (self.lease_duration / 15).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    fn lease_seconds(&self) -> i32 {
        self.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    /// Waits until this instance holds the Lease; returns the Lease as written and when the
    /// write was sent.
    async fn acquire(&self, leases: &Api<Lease>) -> (Lease, Instant) {
        let mut observed = Observed { record: None, at: Instant::now() };
        let mut first = true;
        loop {
            if !first {
                tokio::time::sleep(self.retry_period()).await;
            }
            first = false;
            match self.try_acquire(leases, &mut observed).await {
                Ok(Some(held)) => return held,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot read or take the Lease; retrying"),
            }
        }
    }

    /// One look: takes the Lease if it is free (never held, released, or unchanged for its
    /// duration as this process saw it).
    async fn try_acquire(&self, leases: &Api<Lease>, observed: &mut Observed) -> Result<Option<(Lease, Instant)>, LeadershipError> {
        let error = |source| LeadershipError::Lease { lease: self.lease_name.clone(), source };
        let sent = Instant::now();
        let Some(current) = leases.get_opt(&self.lease_name).await.map_err(error)? else {
            let lease =
                Lease { metadata: ObjectMeta { name: Some(self.lease_name.clone()), ..Default::default() }, spec: Some(self.record(None)) };
            return match leases.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(Some((created, sent))),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
                Err(source) => Err(error(source)),
            };
        };
        let record = current.spec.clone().unwrap_or_default();
        if observed.record.as_ref() != Some(&record) {
            observed.record = Some(record.clone());
            // When the answer arrived, not when the request left: the record may have been
            // renewed just before the server answered (client-go's `observedTime`).
            observed.at = Instant::now();
        }
        let holder = record.holder_identity.as_deref().filter(|h| !h.is_empty());
        let duration = record.lease_duration_seconds.map_or(self.lease_duration, |s| Duration::from_secs(s.max(0) as u64));
        if holder.is_some_and(|h| h != self.identity) && observed.at + duration > Instant::now() {
            return Ok(None);
        }
        let transitions = record.lease_transitions.unwrap_or(0) + i32::from(holder != Some(self.identity.as_str()));
        let mut taken = current.clone();
        taken.spec = Some(LeaseSpec { lease_transitions: Some(transitions), ..self.record(None) });
        match leases.replace(&self.lease_name, &PostParams::default(), &taken).await {
            Ok(written) => {
                observed.record = written.spec.clone();
                Ok(Some((written, sent)))
            }
            // Another candidate wrote first: look again.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(source) => Err(error(source)),
        }
    }

    /// This instance's record, acquired now (or at `acquired`) and renewed now.
    fn record(&self, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..Default::default()
        }
    }

    /// Renews the Lease for as long as it can be sure it holds it; returns why it stopped:
    /// another holder written, or no renewal got through in time (the API server out of
    /// reach, renewals stuck or refused). A renewal sent at `t` keeps the Lease at least
    /// until `t + lease_duration` in every candidate's eyes; the holder stops acting
    /// `renew_margin` before that.
    async fn keep(&self, leases: &Api<Lease>, held: &mut (Lease, Instant)) -> LeadershipError {
        let (lease, renewed_at) = held;
        let lost = || LeadershipError::Lost(self.lease_name.clone());
        loop {
            let valid_until = *renewed_at + self.lease_duration.saturating_sub(self.renew_margin);
            let next = (Instant::now() + self.retry_period()).min(valid_until);
            tokio::time::sleep_until(next).await;
            let left = valid_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(lease = %self.lease_name, "the Lease was not renewed in time and may expire; stepping down");
                return lost();
            }
            let sent = Instant::now();
            let mut renewal = lease.clone();
            let acquired = lease.spec.as_ref().and_then(|s| s.acquire_time.clone());
            let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions);
            renewal.spec = Some(LeaseSpec { lease_transitions: transitions, ..self.record(acquired) });
            match tokio::time::timeout(left, leases.replace(&self.lease_name, &PostParams::default(), &renewal)).await {
                Ok(Ok(written)) => {
                    *lease = written;
                    *renewed_at = sent;
                }
                Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                    // Written by someone else since: who holds it now? (Bounded like the
                    // renewal: a read that hangs must not keep this instance acting.)
                    let left = valid_until.saturating_duration_since(Instant::now());
                    let current = match tokio::time::timeout(left, leases.get_opt(&self.lease_name)).await {
                        Ok(current) => current,
                        Err(_) => continue,
                    };
                    match current {
                        Ok(Some(current)) => {
                            let holder = current.spec.as_ref().and_then(|s| s.holder_identity.clone());
                            if holder.as_deref() != Some(self.identity.as_str()) {
                                tracing::warn!(?holder, "the Lease names another holder");
                                return lost();
                            }
                            *lease = current;
                        }
                        Ok(None) => return lost(),
                        Err(error) => tracing::warn!(%error, "cannot read the Lease"),
                    }
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot renew the Lease; retrying"),
                Err(_) => tracing::warn!("renewing the Lease timed out"),
            }
        }
    }

    /// Lets the next instance take over at once (client-go's `ReleaseOnCancel`): the holder
    /// is cleared, written only over the record this instance last wrote.
    async fn release(&self, leases: &Api<Lease>, held: Lease) {
        let mut released = held;
        if let Some(spec) = released.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        let params = PostParams::default();
        let attempt = leases.replace(&self.lease_name, &params, &released);
        match tokio::time::timeout(self.renew_margin, attempt).await {
            Ok(Ok(_)) => tracing::info!(lease = %self.lease_name, "Lease released"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release the Lease; the next instance waits for it to expire"),
            Err(_) => tracing::warn!("could not release the Lease in time; the next instance waits for it to expire"),
        }
    }
}
