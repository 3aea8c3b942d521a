//! One Pod bound to the stand-in node: its containers run as processes until the Pod is
//! deleted, and its status says what the kubelet's would (phase, pod IP, conditions,
//! container states).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::containers::ContainerProcess;
use super::environment::PodContext;
use super::NodeConfig;

/// Runs the Pod until it is deleted (its latest object arrives on `updates`; `None` once it is
/// gone from the API server), then stops its processes and removes the Pod.
pub async fn run(client: kube::Client, config: Arc<NodeConfig>, pod_ip: String, mut updates: watch::Receiver<Option<Pod>>) {
    let Some(pod) = updates.borrow().clone() else { return };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        // Deleted before it ran here (or under an earlier node process): let it go.
        final_delete(&pods, &name, &uid).await;
        return;
    }
    let folder = config.state_dir.join(format!("{namespace}_{name}_{uid}"));
    let _ = std::fs::create_dir_all(&folder);
    let started = Timestamp::now();
    let mut containers = start_containers(&client, &config, &pod, &pod_ip, &folder).await;
    let restart_policy = pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
    let mut last_status = Value::Null;
    let mut last_retry = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let current = updates.borrow().clone();
        let Some(current) = current else {
            // Gone from the server (force-deleted): nothing left to report.
            stop_all(&mut containers, Duration::from_secs(1)).await;
            break;
        };
        if current.metadata.deletion_timestamp.is_some() {
            let grace = current.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u64;
            stop_all(&mut containers, Duration::from_secs(grace)).await;
            final_delete(&pods, &name, &uid).await;
            break;
        }
        for container in &mut containers {
            let restart = match restart_policy.as_str() {
                "Never" => container.started_at.is_none(),
                "OnFailure" => container.last_exit.as_ref().is_none_or(|e| e.code != 0),
                _ => true,
            };
            container.tick(&http, restart).await;
        }
        if containers.iter().any(ContainerProcess::is_waiting) && last_retry.elapsed() >= Duration::from_secs(2) {
            last_retry = Instant::now();
            retry_waiting(&client, &config, &current, &pod_ip, &folder, &mut containers).await;
        }
        let status = pod_status(&containers, &pod_ip, started, &restart_policy);
        if status != last_status {
            // The uid makes it a precondition: never this status on a new Pod of the same name.
            let patch = json!({"metadata": {"uid": uid}, "status": status.clone()});
            match pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => last_status = status,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(error) => tracing::warn!(pod = %name, %error, "status write failed; retrying"),
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            changed = updates.changed() => if changed.is_err() { stop_all(&mut containers, Duration::from_secs(1)).await; break; },
        }
    }
    let _ = std::fs::remove_dir_all(folder.join("volumes"));
}

/// The kubelet's last word on a deleted Pod: delete it for good, only this incarnation of
/// the name.
async fn final_delete(pods: &Api<Pod>, name: &str, uid: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(uid.to_owned()), resource_version: None }),
        ..Default::default()
    };
    if let Err(error) = pods.delete(name, &params).await {
        tracing::debug!(pod = %name, %error, "final delete");
    }
}

async fn start_containers(
    client: &kube::Client,
    config: &NodeConfig,
    pod: &Pod,
    pod_ip: &str,
    folder: &std::path::Path,
) -> Vec<ContainerProcess> {
    let context = context(client, config, pod, pod_ip, folder);
    let mut containers = Vec::new();
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let spec = context.spec(container).await;
        if let Err(error) = &spec {
            tracing::warn!(pod = ?pod.metadata.name, container = %container.name, "cannot run: {error:#}");
        }
        let log = folder.join(format!("{}.log", container.name));
        containers.push(ContainerProcess::new(container, spec, pod_ip, log));
    }
    containers
}

/// Sets up again the containers that could not start (their Secret, ConfigMap or token).
async fn retry_waiting(
    client: &kube::Client,
    config: &NodeConfig,
    pod: &Pod,
    pod_ip: &str,
    folder: &std::path::Path,
    containers: &mut [ContainerProcess],
) {
    let context = context(client, config, pod, pod_ip, folder);
    for (container, process) in pod.spec.iter().flat_map(|s| s.containers.iter()).zip(containers.iter_mut()) {
        if process.is_waiting() {
            let spec = context.spec(container).await;
            process.retry(spec);
        }
    }
}

fn context<'a>(
    client: &'a kube::Client,
    config: &'a NodeConfig,
    pod: &'a Pod,
    pod_ip: &'a str,
    folder: &'a std::path::Path,
) -> PodContext<'a> {
    PodContext {
        client,
        pod,
        pod_ip,
        node_name: &config.name,
        folder,
        server: &config.server,
        ca_pem: &config.ca_pem,
        binaries: &config.binaries,
    }
}

async fn stop_all(containers: &mut [ContainerProcess], grace: Duration) {
    futures::future::join_all(containers.iter_mut().map(|c| c.stop(grace))).await;
}

fn time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The Pod's status as the kubelet would write it.
fn pod_status(containers: &[ContainerProcess], pod_ip: &str, started: Timestamp, restart_policy: &str) -> Value {
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let any_running = containers.iter().any(|c| c.running());
    let phase = if any_running || containers.iter().any(|c| c.waiting.is_none() && c.last_exit.is_none()) {
        "Running"
    } else if restart_policy != "Always" && containers.iter().all(|c| c.last_exit.as_ref().is_some_and(|e| e.code == 0)) {
        "Succeeded"
    } else if restart_policy == "Never" && containers.iter().all(|c| c.last_exit.is_some()) {
        "Failed"
    } else {
        "Pending"
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let state = if let Some(reason) = &c.waiting {
                json!({"waiting": {"reason": "CreateContainerConfigError", "message": reason}})
            } else if c.running() {
                json!({"running": {"startedAt": time(c.started_at.unwrap_or(started))}})
            } else if let Some(exit) = &c.last_exit {
                json!({"terminated": {"exitCode": exit.code, "reason": exit.reason, "startedAt": time(c.started_at.unwrap_or(started)), "finishedAt": time(exit.finished_at)}})
            } else {
                json!({"waiting": {"reason": "ContainerCreating"}})
            };
            json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": c.ready, "started": c.running(),
                "restartCount": c.restarts, "state": state,
            })
        })
        .collect();
    let condition =
        |type_: &str, ok: bool| json!({"type": type_, "status": if ok { "True" } else { "False" }, "lastTransitionTime": time(started)});
    json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": time(started),
        "conditions": [
            condition("PodScheduled", true),
            condition("Initialized", true),
            condition("ContainersReady", all_ready),
            condition("Ready", all_ready),
        ],
        "containerStatuses": statuses,
    })
}
