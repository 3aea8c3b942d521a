//! The fake API server over HTTP: the paths, verbs, patch types and watch streams a kube
//! `Client` uses, answered from the `Store`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};

use super::store::{Change, Key, Part, Refused, Resource};
use super::{FakeCluster, Recorded};

/// What a path names.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(namespace.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target { resource: Resource::new(group, version, plural), namespace, name, subresource })
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn answer(code: u16, body: &Value) -> Response {
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), [("content-type", "application/json")], body.to_string())
        .into_response()
}

fn refused(refusal: Refused) -> Response {
    if refusal.code != 404 && refusal.code != 409 {
        eprintln!("fake API server refused: {} {}", refusal.code, refusal.message);
    }
    answer(refusal.code, &refusal.status())
}

fn kind_of(resource: &Resource) -> &'static str {
    match resource.plural.as_str() {
        "couponevents" => "CouponEvent",
        "deployments" => "Deployment",
        "leases" => "Lease",
        "events" => "Event",
        "horizontalpodautoscalers" => "HorizontalPodAutoscaler",
        _ => "Object",
    }
}

fn api_version(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.version.clone()
    } else {
        format!("{}/{}", resource.group, resource.version)
    }
}

/// The `Scale` subresource of a Deployment.
fn scale_of(deployment: &Value) -> Value {
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": deployment["metadata"]["name"], "namespace": deployment["metadata"]["namespace"],
                     "resourceVersion": deployment["metadata"]["resourceVersion"]},
        "spec": {"replicas": replicas}, "status": {"replicas": replicas}
    })
}

pub(super) async fn handle(
    State((cluster, client)): State<(FakeCluster, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let parsed: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    cluster.record(Recorded {
        client: client.clone(),
        method: method.as_str().to_owned(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: parsed.clone(),
        at: std::time::Instant::now(),
    });
    // Recorded, then refused: a test sees what a cut-off client still tried.
    if cluster.is_cut(&client) {
        return answer(503, &json!({"message": "unreachable"}));
    }
    let Some(target) = parse(&path) else {
        return answer(404, &Refused { code: 404, reason: "NotFound", message: format!("no route {path}") }.status());
    };
    let Some(name) = target.name.clone() else {
        return collection(cluster, &method, &target, &query, parsed).await;
    };
    let key = Key { resource: target.resource.clone(), namespace: target.namespace.clone().unwrap_or_default(), name };
    let part = match target.subresource.as_deref() {
        None => Part::Object,
        Some("status") => Part::Status,
        Some("scale") if target.resource.plural == "deployments" => return scale(cluster, &method, &key, &parsed),
        Some(other) => return answer(404, &json!({"message": format!("no subresource {other}")})),
    };
    let manager = query_value(&query, "fieldManager").map(str::to_owned);
    let force = query_value(&query, "force") == Some("true");
    let mut store = cluster.store();
    let result = match method.as_str() {
        "GET" => store.get(&key).cloned().ok_or_else(|| Refused::not_found(&key)),
        "PUT" => store.update(&key, part, parsed),
        "DELETE" => store.delete(&key),
        "PATCH" if content_type.starts_with("application/json-patch") => store.json_patch(&key, part, &parsed),
        "PATCH" if content_type.starts_with("application/apply-patch") => {
            store.apply(&key, part, &parsed, manager.as_deref().unwrap_or_default(), force)
        }
        "PATCH" => store.merge(&key, part, &parsed, manager.as_deref()),
        other => Err(Refused { code: 405, reason: "MethodNotAllowed", message: format!("{other} not allowed") }),
    };
    drop(store);
    cluster.publish();
    match result {
        Ok(object) => answer(200, &object),
        Err(refusal) => refused(refusal),
    }
}

async fn collection(cluster: FakeCluster, method: &Method, target: &Target, query: &str, body: Value) -> Response {
    match method.as_str() {
        "GET" if matches!(query_value(query, "watch"), Some("true" | "1")) => watch(cluster, target, query),
        "GET" => {
            let store = cluster.store();
            let items = store.list(&target.resource, target.namespace.as_deref());
            let list = json!({
                "apiVersion": api_version(&target.resource),
                "kind": format!("{}List", kind_of(&target.resource)),
                "metadata": {"resourceVersion": store.resource_version().to_string()},
                "items": items,
            });
            answer(200, &list)
        }
        "POST" => {
            let result = cluster.store().create(&target.resource, target.namespace.as_deref().unwrap_or_default(), body);
            cluster.publish();
            match result {
                Ok(object) => answer(201, &object),
                Err(refusal) => refused(refusal),
            }
        }
        other => answer(405, &json!({"message": format!("{other} on a collection")})),
    }
}

/// The scale subresource: reads and writes the Deployment's `spec.replicas`.
fn scale(cluster: FakeCluster, method: &Method, key: &Key, body: &Value) -> Response {
    let mut store = cluster.store();
    let Some(deployment) = store.get(key).cloned() else { return refused(Refused::not_found(key)) };
    let result = match method.as_str() {
        "GET" => Ok(deployment),
        "PATCH" | "PUT" => {
            let mut scale = scale_of(&deployment);
            json_patch::merge(&mut scale, body);
            let mut proposed = deployment;
            proposed["spec"]["replicas"] = scale["spec"]["replicas"].clone();
            proposed["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
            store.update(key, Part::Object, proposed)
        }
        other => Err(Refused { code: 405, reason: "MethodNotAllowed", message: format!("{other} on scale") }),
    };
    drop(store);
    cluster.publish();
    match result {
        Ok(deployment) => answer(200, &scale_of(&deployment)),
        Err(refusal) => refused(refusal),
    }
}

/// A watch: the changes after `resourceVersion` (every current object as `ADDED` without
/// one), then live changes, one JSON line each, until `timeoutSeconds`.
fn watch(cluster: FakeCluster, target: &Target, query: &str) -> Response {
    let since: u64 = query_value(query, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = Duration::from_secs(query_value(query, "timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(300));
    let resource = target.resource.clone();
    let namespace = target.namespace.clone();
    let matches = move |key: &Key| key.resource == resource && namespace.as_ref().is_none_or(|ns| &key.namespace == ns);
    let mut live = cluster.subscribe();
    let (backlog, mut last) = {
        let store = cluster.store();
        if since == 0 {
            let all: Vec<Change> = store
                .list(&target.resource, target.namespace.as_deref())
                .into_iter()
                .map(|object| Change {
                    resource_version: store.resource_version(),
                    key: Key { resource: target.resource.clone(), namespace: String::new(), name: String::new() },
                    kind: "ADDED",
                    object,
                })
                .collect();
            (all, store.resource_version())
        } else {
            let changes = store.history.iter().filter(|c| c.resource_version > since && matches(&c.key)).cloned().collect();
            (changes, store.resource_version())
        }
    };
    let line = |change: &Change| Ok::<_, Infallible>(Bytes::from(format!("{}\n", json!({"type": change.kind, "object": change.object}))));
    let first = futures::stream::iter(backlog.iter().map(line).collect::<Vec<_>>());
    let rest = async_stream(move |sender| async move {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, live.recv()).await {
                Ok(Ok(change)) if change.resource_version > last && matches(&change.key) => {
                    last = change.resource_version;
                    if sender.send(line(&change)).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(_)) => {}
                // Lagging or closed: end the watch; the client watches again from its last
                // version, which the history still holds.
                Ok(Err(_)) | Err(_) => return,
            }
        }
    });
    Response::builder().status(200).header("content-type", "application/json").body(Body::from_stream(first.chain(rest))).unwrap()
}

/// A stream fed by a task (what `async-stream` would give, with what tokio has).
fn async_stream<F, Fut>(produce: F) -> impl futures::Stream<Item = Result<Bytes, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(sender));
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
