//! A fake Kubernetes API server behind kube's `Client` (tower-test mock service): it keeps
//! Deployment scales and CouponEvents in memory, answers like the API server, and records
//! every request so tests can assert each one.
//!
//! Why a fake here, when `tests/tests/operator_loop.rs` runs the operator against a real API
//! server: these tests call `reconcile` one step at a time with a clock they set (10:00, 10:29,
//! ...) and assert the exact sequence of requests each step makes, which a real server, with
//! its own time and its own writers, cannot be made to show. What only a real server does
//! (admission, pruning, RBAC, conflicts, Leases, timers) is tested there.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use coupon_operator::crd::CouponEvent;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

/// One request as the API server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path without the query.
    pub path: String,
    pub body: Value,
}

impl Recorded {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    pub fn short(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
pub struct ClusterState {
    /// (namespace, name) -> replicas.
    pub deployments: BTreeMap<(String, String), i32>,
    pub events: BTreeMap<(String, String), CouponEvent>,
    pub requests: Vec<Recorded>,
}

/// The fake server; clone to share.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    pub state: Arc<Mutex<ClusterState>>,
}

fn not_found(what: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn scale(namespace: &str, name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas}, "status": {"replicas": replicas}
    })
}

/// A Deployment that opted in to being scaled by the operator, its pods all available.
fn deployment(namespace: &str, name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"coupons.fcfs.dev/scalable": "true"}},
        "spec": {"replicas": replicas, "selector": {}, "template": {}},
        "status": {"replicas": replicas, "availableReplicas": replicas}
    })
}

/// Applies an RFC 7386 merge patch (the operator's metadata writes).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            target.as_object_mut().unwrap().remove(key);
        } else {
            merge_patch(target.as_object_mut().unwrap().entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies an RFC 6902 patch of the `add`/`remove`/`test` kind kube's finalizer helper sends.
fn json_patch(target: &mut Value, patch: &Value) {
    for op in patch.as_array().unwrap() {
        let path = op["path"].as_str().unwrap();
        match op["op"].as_str().unwrap() {
            "test" => {}
            "add" | "replace" => {
                let (parent, key) = path.rsplit_once('/').unwrap();
                let parent = target.pointer_mut(parent).unwrap();
                match parent {
                    Value::Array(items) => {
                        let index: usize = key.parse().unwrap_or(items.len());
                        items.insert(index.min(items.len()), op["value"].clone());
                    }
                    _ => parent[key] = op["value"].clone(),
                }
            }
            "remove" => {
                let (parent, key) = path.rsplit_once('/').unwrap();
                match target.pointer_mut(parent).unwrap() {
                    Value::Array(items) => {
                        items.remove(key.parse::<usize>().unwrap());
                    }
                    Value::Object(map) => {
                        map.remove(key);
                    }
                    _ => panic!("cannot remove {path}"),
                }
            }
            other => panic!("unexpected patch op {other}"),
        }
    }
}

impl FakeApiServer {
    pub fn with_deployment(self, namespace: &str, name: &str, replicas: i32) -> Self {
        self.state.lock().unwrap().deployments.insert((namespace.into(), name.into()), replicas);
        self
    }

    /// The Deployments as the operator's watched cache would hold them.
    pub fn deployments(&self) -> Vec<k8s_openapi::api::apps::v1::Deployment> {
        let state = self.state.lock().unwrap();
        state.deployments.iter().map(|((ns, name), replicas)| serde_json::from_value(deployment(ns, name, *replicas)).unwrap()).collect()
    }

    pub fn put_event(&self, event: &CouponEvent) {
        self.state.lock().unwrap().events.insert((event.namespace().unwrap(), event.name_any()), event.clone());
    }

    pub fn event(&self, namespace: &str, name: &str) -> CouponEvent {
        self.state.lock().unwrap().events[&(namespace.to_owned(), name.to_owned())].clone()
    }

    pub fn replicas(&self, namespace: &str, name: &str) -> Option<i32> {
        self.state.lock().unwrap().deployments.get(&(namespace.to_owned(), name.to_owned())).copied()
    }

    /// Requests since the last call.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
                let (status, answer) = server.answer(&method, &path, &body);
                server.state.lock().unwrap().requests.push(Recorded { method, path, body });
                respond.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
            }
        });
        Client::new(service, "default")
    }

    fn answer(&self, method: &Method, path: &str, body: &Value) -> (StatusCode, Value) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut state = self.state.lock().unwrap();
        match (method.as_str(), parts.as_slice()) {
            // Whether an event's namespace is terminating: never here.
            ("GET", ["api", "v1", "namespaces", ns]) => {
                (StatusCode::OK, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}}))
            }
            ("GET", ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
                match state.deployments.get(&(ns.to_string(), name.to_string())) {
                    Some(replicas) => (StatusCode::OK, deployment(ns, name, *replicas)),
                    None => not_found(name),
                }
            }
            ("GET", ["apis", "autoscaling", "v2", "namespaces", _, "horizontalpodautoscalers"]) => (
                StatusCode::OK,
                json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList", "metadata": {}, "items": []}),
            ),
            ("GET", ["apis", "apps", "v1", "namespaces", ns, "deployments", name, "scale"]) => {
                match state.deployments.get(&(ns.to_string(), name.to_string())) {
                    Some(replicas) => (StatusCode::OK, scale(ns, name, *replicas)),
                    None => not_found(name),
                }
            }
            ("PATCH", ["apis", "apps", "v1", "namespaces", ns, "deployments", name, "scale"]) => {
                let replicas = body["spec"]["replicas"].as_i64().unwrap() as i32;
                match state.deployments.get_mut(&(ns.to_string(), name.to_string())) {
                    Some(current) => {
                        *current = replicas;
                        (StatusCode::OK, scale(ns, name, replicas))
                    }
                    None => not_found(name),
                }
            }
            ("PATCH", ["apis", "coupons.fcfs.dev", "v1alpha1", "namespaces", ns, "couponevents", name]) => {
                let key = (ns.to_string(), name.to_string());
                let Some(event) = state.events.get(&key) else { return not_found(name) };
                let mut value = serde_json::to_value(event).unwrap();
                if body.is_array() {
                    json_patch(&mut value, body);
                } else {
                    merge_patch(&mut value, body);
                }
                let event: CouponEvent = serde_json::from_value(value.clone()).unwrap();
                state.events.insert(key, event);
                (StatusCode::OK, value)
            }
            ("PATCH", ["apis", "coupons.fcfs.dev", "v1alpha1", "namespaces", ns, "couponevents", name, "status"]) => {
                let key = (ns.to_string(), name.to_string());
                let Some(event) = state.events.get_mut(&key) else { return not_found(name) };
                event.status = Some(serde_json::from_value(body["status"].clone()).unwrap());
                (StatusCode::OK, serde_json::to_value(&*event).unwrap())
            }
            ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => (StatusCode::CREATED, body.clone()),
            // A repeated event: kube's recorder updates the series.
            ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => (StatusCode::OK, body.clone()),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("unexpected request {method} {path}"), "reason": "InternalError", "code": 500}),
            ),
        }
    }
}
