//! Redis Cluster for the tests: the shared local cluster `dev/stack` starts (three masters
//! with a replica each), and a cluster of a test's own whose masters it may kill.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::provision;
use coupon_core::redis::{diagnostics, RedisConnection, RedisHandle};

use crate::{free_port, kafka, unique, wait_until, ChildProcess, TestEvent};

/// A node of the shared local cluster (`dev/stack up cluster`; `REDIS_CLUSTER_URL`).
pub fn cluster_url() -> String {
    std::env::var("REDIS_CLUSTER_URL").unwrap_or_else(|_| "redis://127.0.0.1:7000".into())
}

pub async fn cluster() -> RedisConnection {
    RedisHandle::connect_with_deadline(cluster_url(), Duration::from_secs(10))
        .await
        .expect("the Redis Cluster is up (dev/stack up cluster)")
}

/// Provisions an event of `shards` shards, open now for ten minutes, on a new topic.
pub async fn provision_sharded_event(redis_url: &str, brokers: &str, namespace: &str, limit: i64, shards: u16) -> TestEvent {
    let name = unique("ev");
    let id = EventId::new(namespace, &name).unwrap();
    let topic = format!("coupons.{name}");
    let config = EventConfig { shards, ..EventConfig::open_now(limit, &topic, Duration::from_secs(600)) };
    let admin = kafka(brokers).admin().unwrap();
    let mut conn = RedisHandle::connect_with_deadline(redis_url, Duration::from_secs(10)).await.expect("Redis is up");
    provision::provision_event(&mut conn, &admin, &id, &config, 3, 1).await.expect("provision");
    TestEvent { id, topic, limit }
}

/// The master (`host:port`) that serves `slot`, from `CLUSTER SLOTS`.
pub async fn master_of_slot(conn: &mut RedisConnection, slot: u16) -> String {
    let ranges = diagnostics::slot_masters(conn).await.unwrap();
    let (_, _, host, port) = ranges.into_iter().find(|(from, to, _, _)| (*from..=*to).contains(&slot)).expect("every slot is served");
    format!("{host}:{port}")
}

/// A Redis Cluster owned by one test: three masters and three replicas on free ports, a
/// failover after one second without a master.
pub struct OwnCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    processes: Vec<Option<ChildProcess>>,
}

impl OwnCluster {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("own-cluster"));
        let mut ports = Vec::new();
        let mut processes = Vec::new();
        for _ in 0..6 {
            let (port, process) = Self::start_node(&dir).await;
            ports.push(port);
            processes.push(Some(process));
        }
        let cluster = Self { ports, dir, processes };
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create.args(["--cluster-replicas", "1", "--cluster-yes"]).output().await.expect("redis-cli runs");
        assert!(output.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&output.stdout));
        cluster.wait_until_serving().await;
        cluster.wait_until_replicas_synced().await;
        cluster
    }

    /// Starts one node on a free port, with its cluster bus on another free port: the
    /// default bus port (the port plus 10,000) does not exist for ports above 55535, which
    /// the kernel hands out, and a node refuses to start then. A port taken between
    /// `free_port` and the node's bind makes it exit; it is started again on new ports.
    async fn start_node(dir: &Path) -> (u16, ChildProcess) {
        for _ in 0..5 {
            let (port, bus_port) = (free_port(), free_port());
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let (port_arg, bus_port_arg) = (port.to_string(), bus_port.to_string());
            let args = [
                "--port",
                &port_arg,
                "--cluster-port",
                &bus_port_arg,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                // Replicas in sync at once: a replica that never synced cannot take over.
                "--repl-diskless-sync-delay",
                "0",
                "--logfile",
                "node.log",
            ];
            let mut process = ChildProcess::spawn_in(&node_dir, Path::new("redis-server"), &args, &[]);
            let addr = format!("127.0.0.1:{port}");
            let listening = wait_until("cluster node listening or exited", Duration::from_secs(20), || {
                let addr = addr.clone();
                let exited = process.child.try_wait().ok().flatten().is_some();
                async move {
                    if exited {
                        return Some(false);
                    }
                    tokio::net::TcpStream::connect(addr).await.ok().map(|_| true)
                }
            })
            .await;
            if listening {
                return (port, process);
            }
            let log = std::fs::read_to_string(node_dir.join("node.log")).unwrap_or_default();
            eprintln!("redis-server on {port} (bus {bus_port}) exited; starting it on other ports: {log}");
        }
        panic!("no cluster node could start in five tries");
    }

    /// Waits until every replica's link to its master is up (its initial sync done).
    async fn wait_until_replicas_synced(&self) {
        let urls = self.node_urls();
        wait_until("every replica in sync", Duration::from_secs(60), || {
            let urls = urls.clone();
            async move {
                let mut synced = 0;
                for url in urls {
                    let state = diagnostics::node_state(&url).await?;
                    if state.replica {
                        synced += usize::from(state.replica_in_sync);
                    }
                }
                (synced == 3).then_some(())
            }
        })
        .await;
    }

    /// Waits until no live node names `port` as the master of any slot: its replica took
    /// over.
    pub async fn wait_until_failed_over(&self, port: u16) {
        self.wait_until_serving().await;
        let live: Vec<String> = self.ports.iter().filter(|p| **p != port).map(|p| format!("redis://127.0.0.1:{p}")).collect();
        wait_until("a replica took over", Duration::from_secs(60), || {
            let live = live.clone();
            async move {
                for url in live {
                    if diagnostics::node_state(&url).await?.master_ports.contains(&port) {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    fn node_urls(&self) -> Vec<String> {
        self.ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect()
    }

    /// Seed URL: its first node.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// Every node, comma separated (the seeds form of `REDIS_URL`).
    pub fn seeds(&self) -> String {
        self.ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }

    /// Waits until every live node sees the cluster serving every slot.
    pub async fn wait_until_serving(&self) {
        let urls = self.node_urls();
        wait_until("the cluster serves every slot", Duration::from_secs(60), || {
            let urls = urls.clone();
            async move {
                for url in urls {
                    if diagnostics::node_state(&url).await.is_some_and(|state| !state.cluster_ok) {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    /// SIGKILLs the master serving `slot` (no shutdown, nothing saved); its replica takes
    /// over after the node timeout. Returns the killed node's port.
    pub async fn kill_master_of(&mut self, slot: u16) -> u16 {
        let mut conn = RedisHandle::connect_with_deadline(self.seeds(), Duration::from_secs(10)).await.unwrap();
        let master = master_of_slot(&mut conn, slot).await;
        let port: u16 = master.rsplit(':').next().unwrap().parse().unwrap();
        let index = self.ports.iter().position(|p| *p == port).expect("a node of this cluster");
        if let Some(mut process) = self.processes[index].take() {
            let _ = process.child.kill().await;
        }
        port
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for process in self.processes.iter_mut().flatten() {
            let _ = process.child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
