//! One container as a local process: started, restarted when it exits (the Pod's restart
//! policy), probed as its spec says, and stopped with SIGTERM, then SIGKILL after the grace
//! period.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use tokio::process::{Child, Command};

use super::environment::ProcessSpec;

/// How a probe checks the container.
#[derive(Debug, Clone)]
enum Check {
    Http {
        url: String,
    },
    Tcp {
        address: String,
    },
    /// exec probes run the command on the host with the container's environment.
    Exec {
        command: Vec<String>,
    },
}

/// A probe and its running tally.
#[derive(Debug)]
struct ProbeState {
    check: Check,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: i32,
    failure_threshold: i32,
    next_due: Instant,
    successes: i32,
    failures: i32,
}

impl ProbeState {
    fn new(probe: &Probe, container: &Container, pod_ip: &str) -> Option<Self> {
        let port = |port: &IntOrString| -> u16 {
            match port {
                IntOrString::Int(n) => *n as u16,
                IntOrString::String(name) => {
                    container.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port as u16).unwrap_or(0)
                }
            }
        };
        let check = if let Some(http) = &probe.http_get {
            let scheme = http.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
            let path = http.path.as_deref().unwrap_or("/");
            Check::Http { url: format!("{scheme}://{pod_ip}:{}{path}", port(&http.port)) }
        } else if let Some(tcp) = &probe.tcp_socket {
            Check::Tcp { address: format!("{pod_ip}:{}", port(&tcp.port)) }
        } else if let Some(exec) = &probe.exec {
            Check::Exec { command: exec.command.clone().unwrap_or_default() }
        } else {
            return None;
        };
        let seconds = |s: Option<i32>, default: i32| Duration::from_secs(s.unwrap_or(default).max(0) as u64);
        let initial_delay = seconds(probe.initial_delay_seconds, 0);
        Some(Self {
            check,
            initial_delay,
            period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
            next_due: Instant::now() + initial_delay,
            successes: 0,
            failures: 0,
        })
    }

    fn restart(&mut self) {
        self.next_due = Instant::now() + self.initial_delay;
        self.successes = 0;
        self.failures = 0;
    }

    /// Runs the probe when due; `Some(true)` once it passed `success_threshold` times in a
    /// row, `Some(false)` once it failed `failure_threshold` times, `None` while undecided.
    async fn poll(&mut self, http: &reqwest::Client, env: &ProcessSpec) -> Option<bool> {
        if Instant::now() < self.next_due {
            return None;
        }
        self.next_due = Instant::now() + self.period;
        let passed = tokio::time::timeout(self.timeout, self.check(http, env)).await.unwrap_or(false);
        if passed {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.failure_threshold).then_some(false)
        }
    }

    async fn check(&self, http: &reqwest::Client, env: &ProcessSpec) -> bool {
        match &self.check {
            Check::Http { url } => http.get(url).send().await.is_ok_and(|r| (200..400).contains(&r.status().as_u16())),
            Check::Tcp { address } => tokio::net::TcpStream::connect(address).await.is_ok(),
            Check::Exec { command } => {
                let Some((program, args)) = command.split_first() else { return false };
                Command::new(program)
                    .args(args)
                    .envs(&env.env)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .is_ok_and(|s| s.success())
            }
        }
    }
}

/// How the last run of a container ended.
#[derive(Debug, Clone)]
pub struct Exit {
    pub code: i32,
    pub reason: String,
    pub finished_at: Timestamp,
}

/// A container of a Pod, as a process.
pub struct ContainerProcess {
    pub name: String,
    pub image: String,
    spec: ProcessSpec,
    log: PathBuf,
    child: Option<Child>,
    pub started_at: Option<Timestamp>,
    pub restarts: i32,
    pub ready: bool,
    pub last_exit: Option<Exit>,
    /// Why it cannot run (no binary for its image, a missing Secret, ...).
    pub waiting: Option<String>,
    restart_after: Instant,
    /// `lifecycle.preStop.sleep`: waited before SIGTERM, within the grace period.
    pre_stop_sleep: Option<Duration>,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
}

impl ContainerProcess {
    pub fn new(container: &Container, spec: Result<ProcessSpec>, pod_ip: &str, log: PathBuf) -> Self {
        let (spec, waiting) = match spec {
            Ok(spec) => (spec, None),
            Err(error) => (
                ProcessSpec { program: PathBuf::new(), args: vec![], env: Default::default(), workdir: PathBuf::new() },
                Some(format!("{error:#}")),
            ),
        };
        Self {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            spec,
            log,
            child: None,
            started_at: None,
            restarts: 0,
            ready: false,
            last_exit: None,
            waiting,
            restart_after: Instant::now(),
            pre_stop_sleep: container
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref()?.sleep.as_ref())
                .map(|s| Duration::from_secs(s.seconds.max(0) as u64)),
            readiness: container.readiness_probe.as_ref().and_then(|p| ProbeState::new(p, container, pod_ip)),
            liveness: container.liveness_probe.as_ref().and_then(|p| ProbeState::new(p, container, pod_ip)),
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it waits for what it needs to start (a Secret not there yet, say).
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// A new attempt at what it needs: the kubelet retries a container it could not set up.
    pub fn retry(&mut self, spec: Result<ProcessSpec>) {
        match spec {
            Ok(spec) => {
                self.spec = spec;
                self.waiting = None;
            }
            Err(error) => self.waiting = Some(format!("{error:#}")),
        }
    }

    fn start(&mut self) -> Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log).with_context(|| format!("open {}", self.log.display()))?;
        let mut command = Command::new(&self.spec.program);
        command
            .args(&self.spec.args)
            .env_clear()
            .envs(&self.spec.env)
            .current_dir(&self.spec.workdir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when
        // the node process dies, so no container outlives the node.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().with_context(|| format!("start {}", self.spec.program.display()))?);
        self.started_at = Some(Timestamp::now());
        self.ready = self.readiness.is_none();
        for probe in self.readiness.iter_mut().chain(self.liveness.iter_mut()) {
            probe.restart();
        }
        Ok(())
    }

    /// One round: (re)starts the process when it is due, reaps it when it exited, runs the
    /// probes that are due. Returns true when something a status shows changed.
    pub async fn tick(&mut self, http: &reqwest::Client, restart: bool) -> bool {
        if self.waiting.is_some() {
            return false;
        }
        let before = (self.running(), self.ready, self.restarts);
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.ready = false;
                let code = status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(9));
                self.last_exit =
                    Some(Exit { code, reason: if code == 0 { "Completed".into() } else { "Error".into() }, finished_at: Timestamp::now() });
                // CrashLoopBackOff, shortened: a test should not wait minutes for a restart.
                self.restart_after = Instant::now() + Duration::from_secs((1u64 << self.restarts.min(4)).min(10));
            }
        }
        if self.child.is_none() && restart && Instant::now() >= self.restart_after {
            if self.started_at.is_some() {
                self.restarts += 1;
            }
            if let Err(error) = self.start() {
                self.waiting = Some(format!("{error:#}"));
            }
        }
        if self.child.is_some() {
            if let Some(probe) = &mut self.readiness {
                if let Some(ready) = probe.poll(http, &self.spec).await {
                    self.ready = ready;
                }
            }
            if let Some(probe) = &mut self.liveness {
                if probe.poll(http, &self.spec).await == Some(false) {
                    tracing::warn!(container = %self.name, "liveness probe failed; restarting");
                    self.stop(Duration::from_secs(5)).await;
                }
            }
        }
        before != (self.running(), self.ready, self.restarts)
    }

    /// The preStop sleep, then SIGTERM, then SIGKILL once `grace` (counted from the start,
    /// as the kubelet counts it) has passed.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        self.ready = false;
        let deadline = Instant::now() + grace;
        if let Some(sleep) = self.pre_stop_sleep {
            tokio::time::sleep(sleep.min(grace)).await;
        }
        let grace = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(2));
        if let Some(pid) = child.id() {
            // SAFETY: a plain kill(2) of our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.kill().await;
                child.wait().await.ok()
            }
        };
        let code = status.and_then(|s| s.code()).unwrap_or(137);
        self.last_exit =
            Some(Exit { code, reason: if code == 0 { "Completed".into() } else { "Error".into() }, finished_at: Timestamp::now() });
    }
}
