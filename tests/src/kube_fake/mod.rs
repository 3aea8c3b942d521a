//! A stateful fake Kubernetes API server, served over HTTP on 127.0.0.1, so that the real
//! kube-runtime controller (watch, reflector, finalizers, status and scale subresources,
//! Events, Leases) runs against it unchanged. Every request is recorded with the client that
//! made it, so tests count what each operator instance wrote.
//!
//! It is not a conformance-level API server: no admission, no field selectors, no bookmarks;
//! what it does answer follows the API server's semantics (see `store`).

mod server;
mod store;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use kube::Resource as KubeResource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
pub use store::{Key, Resource};
use tokio::sync::broadcast;

/// One request as the fake server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The name given to `FakeCluster::client`.
    pub client: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub at: Instant,
}

impl Recorded {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// `(api group, resource, verb)` in RBAC's terms.
    pub fn permission(&self) -> (String, String, String) {
        let parts: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let rest: &[&str] = match parts.as_slice() {
            ["api", _, rest @ ..] => rest,
            ["apis", _, _, rest @ ..] => rest,
            _ => &[],
        };
        let group = if parts.first() == Some(&"api") { String::new() } else { parts.get(1).copied().unwrap_or_default().to_owned() };
        let rest = match rest {
            ["namespaces", _, rest @ ..] => rest,
            rest => rest,
        };
        let watching = self.query.split('&').any(|p| p == "watch=true" || p == "watch=1");
        let (resource, verb) = match (rest, self.method.as_str()) {
            ([plural], "GET") => (plural.to_string(), if watching { "watch" } else { "list" }),
            ([plural], "POST") => (plural.to_string(), "create"),
            ([plural, _], method) | ([plural, _, ""], method) => (plural.to_string(), verb_of(method)),
            ([plural, _, sub], method) => (format!("{plural}/{sub}"), verb_of(method)),
            _ => (self.path.clone(), "unknown"),
        };
        (group, resource, verb.to_owned())
    }
}

fn verb_of(method: &str) -> &'static str {
    match method {
        "GET" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        "POST" => "create",
        _ => "unknown",
    }
}

struct Inner {
    store: Mutex<store::Store>,
    /// How much of the store's history has been sent to the watches.
    published: Mutex<usize>,
    changes: broadcast::Sender<store::Change>,
    requests: Mutex<Vec<Recorded>>,
    /// Clients whose requests are no longer answered (their process died, say).
    cut: Mutex<std::collections::HashSet<String>>,
}

/// The fake cluster; clones share it.
#[derive(Clone)]
pub struct FakeCluster {
    inner: Arc<Inner>,
}

impl Default for FakeCluster {
    fn default() -> Self {
        Self::new()
    }
}

fn resource_of<K: KubeResource<DynamicType = ()>>() -> Resource {
    Resource::new(&K::group(&()), &K::version(&()), &K::plural(&()))
}

impl FakeCluster {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(65_536);
        Self {
            inner: Arc::new(Inner {
                store: Mutex::default(),
                published: Mutex::new(0),
                changes,
                requests: Mutex::default(),
                cut: Mutex::default(),
            }),
        }
    }

    fn store(&self) -> MutexGuard<'_, store::Store> {
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self) -> broadcast::Receiver<store::Change> {
        self.inner.changes.subscribe()
    }

    /// Sends the changes not yet sent to the open watches, in order.
    fn publish(&self) {
        let store = self.store();
        let mut published = self.inner.published.lock().unwrap_or_else(|e| e.into_inner());
        for change in &store.history[*published..] {
            let _ = self.inner.changes.send(change.clone());
        }
        *published = store.history.len();
    }

    fn record(&self, request: Recorded) {
        self.inner.requests.lock().unwrap_or_else(|e| e.into_inner()).push(request);
    }

    /// A kube client of its own (its requests are recorded under `name`), talking HTTP to a
    /// listener of this cluster.
    pub async fn client(&self, name: &str) -> kube::Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(server::handle).with_state((self.clone(), name.to_owned()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = kube::Config::new(format!("http://{address}").parse().unwrap());
        kube::Client::try_from(config).expect("kube client")
    }

    /// From now on `client`'s requests fail (503) without effect, as if its process had
    /// died or lost the network: nothing it held is released.
    pub fn cut(&self, client: &str) {
        self.inner.cut.lock().unwrap_or_else(|e| e.into_inner()).insert(client.to_owned());
    }

    fn is_cut(&self, client: &str) -> bool {
        self.inner.cut.lock().unwrap_or_else(|e| e.into_inner()).contains(client)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Creates an object as `kubectl create` would.
    pub fn create<K: KubeResource<DynamicType = ()> + Serialize + DeserializeOwned>(&self, object: &K) -> K {
        let mut value = serde_json::to_value(object).unwrap();
        value["apiVersion"] = K::api_version(&()).into();
        value["kind"] = K::kind(&()).into();
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        let created = self.store().create(&resource_of::<K>(), &namespace, value).expect("create");
        self.publish();
        serde_json::from_value(created).unwrap()
    }

    pub fn get<K: KubeResource<DynamicType = ()> + DeserializeOwned>(&self, namespace: &str, name: &str) -> Option<K> {
        let key = Key { resource: resource_of::<K>(), namespace: namespace.into(), name: name.into() };
        self.store().get(&key).map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// All objects of a kind in a namespace.
    pub fn list<K: KubeResource<DynamicType = ()> + DeserializeOwned>(&self, namespace: &str) -> Vec<K> {
        self.store().list(&resource_of::<K>(), Some(namespace)).into_iter().map(|v| serde_json::from_value(v).unwrap()).collect()
    }

    /// A merge patch of an object's spec or metadata, as `kubectl patch --type merge` would.
    pub fn patch<K: KubeResource<DynamicType = ()>>(&self, namespace: &str, name: &str, patch: Value) {
        let key = Key { resource: resource_of::<K>(), namespace: namespace.into(), name: name.into() };
        self.store().merge(&key, store::Part::Object, &patch, None).expect("patch");
        self.publish();
    }

    /// `kubectl delete`: waits for finalizers like the API server.
    pub fn delete<K: KubeResource<DynamicType = ()>>(&self, namespace: &str, name: &str) {
        let key = Key { resource: resource_of::<K>(), namespace: namespace.into(), name: name.into() };
        self.store().delete(&key).expect("delete");
        self.publish();
    }

    /// A Deployment's `spec.replicas`.
    pub fn replicas(&self, namespace: &str, name: &str) -> Option<i64> {
        let key = Key { resource: Resource::new("apps", "v1", "deployments"), namespace: namespace.into(), name: name.into() };
        self.store().get(&key).and_then(|d| d["spec"]["replicas"].as_i64())
    }
}
