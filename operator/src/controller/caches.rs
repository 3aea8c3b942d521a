//! Watched caches of the Deployments and HorizontalPodAutoscalers the operator scales.
//!
//! At the opening of a big sale hundreds of events reconcile within the same second; reading
//! each event's Deployments and listing its namespace's autoscalers from the API server would
//! cost every reconcile several round trips (at 50 ms each on a busy control plane), and the
//! warm-up would not fit its window. Watched caches answer from memory; the API server sends
//! only changes.

use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

/// The cached objects, cheap to clone.
#[derive(Clone)]
pub struct ClusterCaches {
    pub deployments: Store<Deployment>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    /// Turns true once both caches hold a first complete list.
    synced: watch::Receiver<bool>,
}

impl ClusterCaches {
    /// Caches of the Deployments and autoscalers of `namespace` (`None`: every namespace),
    /// and the future that keeps them current (run it for as long as the caches are used).
    pub fn watch(client: Client, namespace: Option<&str>) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (deployments_api, autoscalers_api): (Api<Deployment>, Api<HorizontalPodAutoscaler>) = match namespace {
            Some(namespace) => (Api::namespaced(client.clone(), namespace), Api::namespaced(client, namespace)),
            None => (Api::all(client.clone()), Api::all(client)),
        };
        let (deployments, deployments_writer) = reflector::store();
        let (autoscalers, autoscalers_writer) = reflector::store();
        let (synced_tx, synced) = watch::channel(false);
        let keep_current = async move {
            let (deployments_done, mut deployments_seen) = watch::channel(false);
            let (autoscalers_done, mut autoscalers_seen) = watch::channel(false);
            // Only what scaling reads is kept: a Deployment's pod template and every
            // object's managed fields would be most of the memory.
            let deployments_stream = keep_cached(deployments_api, deployments_writer, deployments_done, "Deployments", |deployment| {
                deployment.managed_fields_mut().clear();
                if let Some(spec) = deployment.spec.as_mut() {
                    spec.template = Default::default();
                }
            });
            let autoscalers_stream =
                keep_cached(autoscalers_api, autoscalers_writer, autoscalers_done, "HorizontalPodAutoscalers", |hpa| {
                    hpa.managed_fields_mut().clear();
                });
            let both_synced = async move {
                let _ = deployments_seen.wait_for(|synced| *synced).await;
                let _ = autoscalers_seen.wait_for(|synced| *synced).await;
                let _ = synced_tx.send(true);
                std::future::pending::<()>().await;
            };
            tokio::join!(deployments_stream, autoscalers_stream, both_synced);
        };
        (Self { deployments, autoscalers, synced }, keep_current)
    }

    /// Caches kept by the caller (tests that feed a fake API server's objects through the
    /// stores' writers), taken as synced.
    pub fn from_stores(deployments: Store<Deployment>, autoscalers: Store<HorizontalPodAutoscaler>) -> Self {
        let (_, synced) = watch::channel(true);
        Self { deployments, autoscalers, synced }
    }

    /// Waits until both caches hold a first complete list: before that, a Deployment missing
    /// from the cache is not missing from the cluster.
    pub async fn synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(namespace))
    }

    /// The autoscaler whose target is the Deployment `namespace/name`, if any.
    pub fn autoscaler_of(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<HorizontalPodAutoscaler>> {
        self.autoscalers.state().into_iter().find(|hpa| {
            hpa.namespace().as_deref() == Some(namespace)
                && hpa.spec.as_ref().is_some_and(|s| s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == name)
        })
    }
}

/// Keeps `writer`'s store current from a watch of `api`, each object trimmed by `strip`;
/// `synced` turns true once the first complete list is in. Watch errors are logged and
/// retried with backoff.
async fn keep_cached<K>(api: Api<K>, writer: Writer<K>, synced: watch::Sender<bool>, what: &'static str, strip: fn(&mut K))
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(strip)
        .reflect(writer)
        .for_each(|event| {
            match event {
                Ok(watcher::Event::InitDone) => {
                    let _ = synced.send(true);
                }
                Err(error) => tracing::warn!(%error, "watch of {what} failed; retrying"),
                Ok(_) => {}
            }
            std::future::ready(())
        })
        .await
}
