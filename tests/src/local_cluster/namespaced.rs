//! One test's namespace on the local control plane, with the operations the operator tests
//! need: objects created, read, patched and deleted as admin; clients that act as
//! ServiceAccounts bound to the chart's operator rules, each through a TCP gate the test can
//! close (a process cut off from the API server); and the requests each of them made, read
//! from the API server's audit log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{service_account_user, LocalCluster};
use crate::tcp_gate::TcpGate;

/// A request the API server audited, as a test reads it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The ServiceAccount the client acted as.
    pub client: String,
    pub method: String,
    /// `/apis/GROUP/VERSION/namespaces/NS/RESOURCE/NAME/SUBRESOURCE`, as requested.
    pub path: String,
    pub verb: String,
    pub code: u16,
    /// The request's body, where the audit policy keeps it (scale writes).
    pub body: Value,
    /// `(api group, resource[/subresource])`.
    pub group: String,
    pub resource: String,
    pub at: Instant,
}

impl Recorded {
    pub fn is_write(&self) -> bool {
        !matches!(self.verb.as_str(), "get" | "list" | "watch")
    }

    /// `(api group, resource, verb)` in RBAC's terms.
    pub fn permission(&self) -> (String, String, String) {
        (self.group.clone(), self.resource.clone(), self.verb.clone())
    }
}

/// A test's namespace on the real cluster; clones share it.
#[derive(Clone)]
pub struct NamespacedCluster {
    pub cluster: LocalCluster,
    pub namespace: String,
    gates: Arc<Mutex<HashMap<String, TcpGate>>>,
}

impl NamespacedCluster {
    /// A fresh namespace (with the CRD installed in the cluster).
    pub async fn new(prefix: &str) -> Self {
        let cluster = LocalCluster::connect().await;
        cluster.install_crd().await;
        let namespace = cluster.namespace(prefix).await;
        Self { cluster, namespace, gates: Default::default() }
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        Api::namespaced(self.cluster.admin.clone(), namespace)
    }

    /// Creates an object (in this namespace unless it names another), as `kubectl create`.
    pub async fn create<K>(&self, object: &K) -> K
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let namespace = object.meta().namespace.clone().unwrap_or_else(|| self.namespace.clone());
        self.api::<K>(&namespace).create(&PostParams::default(), object).await.unwrap_or_else(|e| panic!("create {}: {e}", K::kind(&())))
    }

    pub async fn get<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        self.api::<K>(&self.namespace).get_opt(name).await.expect("get")
    }

    pub async fn list<K>(&self) -> Vec<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        self.api::<K>(&self.namespace).list(&Default::default()).await.expect("list").items
    }

    /// A merge patch, as `kubectl patch --type merge`.
    pub async fn patch<K>(&self, name: &str, patch: Value)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        self.api::<K>(&self.namespace).patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("patch");
    }

    /// A merge patch of the status subresource, as another writer of it would send.
    pub async fn patch_status<K>(&self, name: &str, patch: Value)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        self.api::<K>(&self.namespace).patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("patch status");
    }

    /// Deletes the namespace itself, as `kubectl delete namespace --wait=false`: the real
    /// namespace controller then deletes everything in it.
    pub async fn delete_namespace(&self) {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.cluster.admin.clone());
        namespaces.delete(&self.namespace, &DeleteParams::default()).await.expect("delete namespace");
    }

    /// Whether the namespace still exists (terminating or not).
    pub async fn namespace_exists(&self) -> bool {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.cluster.admin.clone());
        namespaces.get_opt(&self.namespace).await.expect("get namespace").is_some()
    }

    /// `kubectl delete --wait=false`: the server waits for finalizers.
    pub async fn delete<K>(&self, name: &str)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        self.api::<K>(&self.namespace).delete(name, &DeleteParams::default()).await.expect("delete");
    }

    /// A Deployment's `spec.replicas`.
    pub async fn replicas(&self, name: &str) -> Option<i32> {
        self.get::<k8s_openapi::api::apps::v1::Deployment>(name).await.and_then(|d| d.spec?.replicas)
    }

    /// A client acting as the ServiceAccount `name` of this namespace, which holds exactly the
    /// chart's operator rules; it reaches the API server through a gate of its own.
    pub async fn client(&self, name: &str) -> kube::Client {
        self.client_with_latency(name, Duration::ZERO).await
    }

    /// As `client`, with `latency` added to every request (a busy control plane).
    pub async fn client_with_latency(&self, name: &str, latency: Duration) -> kube::Client {
        self.cluster.operator_account(&self.namespace, name).await;
        let server = api_server_address(&self.cluster);
        let mut gate = TcpGate::closed_with_latency(server, latency);
        gate.open().await;
        let gated = format!("https://{}", gate.addr());
        self.gates.lock().unwrap().insert(name.to_owned(), gate);
        let mut kubeconfig: Kubeconfig = self.cluster.kubeconfig_with_token(&self.namespace, name).await;
        for cluster in kubeconfig.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
            cluster.server = Some(gated.clone());
        }
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("gated kubeconfig");
        kube::Client::try_from(config).expect("gated client")
    }

    /// From now on `client`'s connections to the API server are cut and new ones refused, as
    /// if its process had died or lost the network: nothing it held is released.
    pub fn cut(&self, client: &str) {
        if let Some(gate) = self.gates.lock().unwrap().get_mut(client) {
            gate.close();
        }
    }

    /// Lets a client `cut` off reach the API server again (new connections go through).
    pub async fn reconnect(&self, client: &str) {
        let gate = self.gates.lock().unwrap().remove(client);
        if let Some(mut gate) = gate {
            gate.open().await;
            self.gates.lock().unwrap().insert(client.to_owned(), gate);
        }
    }

    /// Every request the clients of this namespace's ServiceAccounts made, from the audit log.
    pub fn requests(&self) -> Vec<Recorded> {
        let now_wall = SystemTime::now();
        let now = Instant::now();
        let prefix = service_account_user(&self.namespace, "");
        self.cluster
            .audited(|user| user.starts_with(&prefix))
            .into_iter()
            .map(|entry| {
                let at = entry.at.map(|t| {
                    let wall = SystemTime::UNIX_EPOCH + Duration::from_nanos(t.as_nanosecond().max(0) as u64);
                    now - now_wall.duration_since(wall).unwrap_or_default()
                });
                Recorded {
                    client: entry.user.trim_start_matches(&prefix).to_owned(),
                    method: entry.method(),
                    path: entry.path(),
                    resource: if entry.subresource.is_empty() {
                        entry.resource.clone()
                    } else {
                        format!("{}/{}", entry.resource, entry.subresource)
                    },
                    group: entry.group.clone(),
                    body: entry.body.clone(),
                    verb: entry.verb.clone(),
                    code: entry.code,
                    at: at.unwrap_or(now),
                }
            })
            .collect()
    }

    /// Requests RBAC refused; the operator must never make one.
    pub fn forbidden(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.code == 403).collect()
    }
}

fn api_server_address(cluster: &LocalCluster) -> SocketAddr {
    let server = cluster.server();
    let authority = server.trim_start_matches("https://").trim_end_matches('/');
    authority.parse().unwrap_or_else(|_| panic!("the API server's address {server} is not IP:port"))
}
