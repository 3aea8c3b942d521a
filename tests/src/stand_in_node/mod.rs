//! The stand-in node: what a kubelet and the scheduler do, for a control plane without a
//! container runtime. It registers a Node, binds every unscheduled Pod to itself, gives each
//! Pod its own loopback address (127.0.x.y) as pod IP, runs each container's command as a
//! local process of this workspace's binaries (chosen by the image's name), with the Pod's
//! environment, volumes and a kubeconfig for its ServiceAccount, runs its probes, writes its
//! status, and stops the processes (SIGTERM, then the grace period) when the Pod is deleted.
//!
//! Listen addresses on all interfaces (`0.0.0.0:PORT` in an environment value or argument)
//! move to the pod IP, so that many Pods listen on the same port side by side; the chart
//! keeps listening on all addresses, which `kubectl port-forward` needs on a real cluster.
//! The API server takes loopback pod IPs, but not loopback endpoints: Services are not
//! routed here, tests reach a Pod at its pod IP.
//!
//! What it does not do: images (no pull, no filesystem of their own: a process runs on the
//! host as the node's user, securityContext and resources are not enforced), init containers,
//! sidecars, volumes other than Secret, ConfigMap, emptyDir and the service-account token,
//! exec and port-forward.

mod containers;
mod environment;
mod pod;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Api;
use serde_json::json;
use tokio::sync::watch;

/// What the node is told at start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// Each Pod's folder (volumes, kubeconfig, container logs) is made under it.
    pub state_dir: PathBuf,
    /// Image name (last path segment, without tag) -> local binary.
    pub binaries: BTreeMap<String, PathBuf>,
    /// The API server's URL and CA certificate (PEM), for the Pods' kubeconfigs.
    pub server: String,
    pub ca_pem: String,
}

/// Runs the node until the process is stopped; on SIGTERM or SIGINT, stops every Pod's
/// processes first.
pub async fn run(client: kube::Client, config: NodeConfig) -> Result<()> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.state_dir).with_context(|| format!("create {}", config.state_dir.display()))?;
    register(&client, &config.name).await?;
    tokio::spawn(heartbeat(client.clone(), config.name.clone()));
    let mut node = PodsOfNode {
        client: client.clone(),
        config: config.clone(),
        running: HashMap::new(),
        addresses: Addresses::default(),
        seen: HashSet::new(),
    };
    let pods = Api::<Pod>::all(client.clone());
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => node.handle(event).await,
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching Pods; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break,
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.shut_down().await;
    Ok(())
}

/// The Node object, Ready, with room for many Pods.
async fn register(client: &kube::Client, name: &str) -> Result<()> {
    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": node_labels(name)}, "spec": {}}))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(error) => return Err(error).context("register the Node"),
    }
    write_node_status(client, name).await
}

fn node_labels(name: &str) -> BTreeMap<&str, &str> {
    BTreeMap::from([("kubernetes.io/hostname", name), ("kubernetes.io/os", "linux"), ("kubernetes.io/arch", std::env::consts::ARCH)])
}

async fn write_node_status(client: &kube::Client, name: &str) -> Result<()> {
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let capacity = json!({"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "StandInNodeReady",
                        "message": "processes run on the host", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "capacity": capacity, "allocatable": capacity,
        "nodeInfo": {"kubeletVersion": "stand-in", "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": std::env::consts::ARCH, "containerRuntimeVersion": "process://",
                     "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": ""},
    }});
    Api::<Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .context("write the Node's status")?;
    Ok(())
}

async fn heartbeat(client: kube::Client, name: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(20)).await;
        if let Err(error) = write_node_status(&client, &name).await {
            tracing::warn!("node heartbeat: {error:#}");
        }
    }
}

/// Loopback addresses handed to Pods: 127.0.1.1 to 127.0.254.254, in turn, so that an address
/// is not reused while a stopped Pod's sockets may linger.
#[derive(Default)]
struct Addresses {
    next: u32,
    in_use: HashSet<Ipv4Addr>,
}

impl Addresses {
    fn take(&mut self) -> Ipv4Addr {
        loop {
            let n = self.next % (254 * 254);
            self.next = self.next.wrapping_add(1);
            let address = Ipv4Addr::new(127, 0, (n / 254 + 1) as u8, (n % 254 + 1) as u8);
            if self.in_use.insert(address) {
                return address;
            }
        }
    }
}

struct RunningPod {
    updates: watch::Sender<Option<Pod>>,
    address: Ipv4Addr,
    task: tokio::task::JoinHandle<()>,
}

struct PodsOfNode {
    client: kube::Client,
    config: Arc<NodeConfig>,
    /// By uid.
    running: HashMap<String, RunningPod>,
    addresses: Addresses,
    /// uids seen since the watch last (re)started.
    seen: HashSet<String>,
}

impl PodsOfNode {
    async fn handle(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.seen.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.apply(pod).await,
            watcher::Event::Delete(pod) => {
                if let Some(running) = pod.metadata.uid.as_ref().and_then(|uid| self.running.get(uid)) {
                    let _ = running.updates.send(None);
                }
            }
            watcher::Event::InitDone => {
                // Pods deleted while the watch was down: stop them.
                for (uid, running) in &self.running {
                    if !self.seen.contains(uid) {
                        let _ = running.updates.send(None);
                    }
                }
            }
        }
        self.reap();
    }

    async fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        self.seen.insert(uid.clone());
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        match node_name {
            None => self.bind(&pod).await,
            Some(name) if name == self.config.name => {
                if let Some(running) = self.running.get(&uid) {
                    let _ = running.updates.send(Some(pod));
                } else if pod.metadata.deletion_timestamp.is_none() && !finished(&pod) {
                    let address = self.addresses.take();
                    let (updates, receiver) = watch::channel(Some(pod));
                    let task = tokio::spawn(pod::run(self.client.clone(), self.config.clone(), address.to_string(), receiver));
                    self.running.insert(uid, RunningPod { updates, address, task });
                } else if pod.metadata.deletion_timestamp.is_some() {
                    // Ours, never started here (an earlier node process): `run` lets it go.
                    let (_, receiver) = watch::channel(Some(pod));
                    tokio::spawn(pod::run(self.client.clone(), self.config.clone(), String::new(), receiver));
                }
            }
            Some(_) => {}
        }
    }

    /// The scheduler's job: every Pod without a node whose `nodeSelector` this node meets is
    /// bound to it (a Pod may stay Pending on purpose with a selector no node has).
    async fn bind(&self, pod: &Pod) {
        if pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let labels = node_labels(&self.config.name);
        let selector = pod.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k.as_str()) == Some(&v.as_str())) {
            return;
        }
        let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else { return };
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": pod.metadata.uid},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.name}});
        let pods = Api::<Pod>::namespaced(self.client.clone(), namespace);
        let result: Result<serde_json::Value, _> = pods.create_subresource("binding", name, &PostParams::default(), &binding).await;
        match result {
            Ok(_) => tracing::info!(pod = %name, %namespace, "bound"),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(error) => tracing::warn!(pod = %name, %error, "bind failed"),
        }
    }

    /// Forgets Pods whose task ended, and frees their addresses.
    fn reap(&mut self) {
        let done: Vec<String> = self.running.iter().filter(|(_, r)| r.task.is_finished()).map(|(uid, _)| uid.clone()).collect();
        for uid in done {
            if let Some(running) = self.running.remove(&uid) {
                self.addresses.in_use.remove(&running.address);
            }
        }
    }

    async fn shut_down(&mut self) {
        tracing::info!(pods = self.running.len(), "stopping every Pod's processes");
        for running in self.running.values() {
            let _ = running.updates.send(None);
        }
        for (_, running) in self.running.drain() {
            let _ = running.task.await;
        }
    }
}

fn finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}
