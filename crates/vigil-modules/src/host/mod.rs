//! Module hosts: every loaded module version runs in a child process of
//! its own, never in the server.
//!
//! The server side ([`ModuleHost`]) starts the host, hands it the exact
//! bytes it hashed, waits for it to say the module loaded and the sandbox
//! is on, and then feeds it calls through a supervisor task. The host side
//! ([`serve`], the whole `main` of the `vigil-module-host` binary) loads the
//! module from a sealed memfd after checking the sum again, confines itself
//! ([`SandboxPolicy`]) and answers calls in order. A module that crashes,
//! hangs or runs out of memory takes only its host down: its caller gets
//! an error with a stable code and the host is started again.

mod child;
mod idle;
mod process;
mod sandbox;
mod supervisor;
mod wire;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use child::serve;
pub use sandbox::{DEFAULT_MEMORY_MIB, DEFAULT_OPEN_FILES, SYSTEM_READ_PATHS, SandboxPolicy};
pub(crate) use supervisor::{Answer, Job};

use crate::ExecError;

/// File name of the host program.
pub const HOST_PROGRAM: &str = "vigil-module-host";

/// Time a host has, from its start, to load its module and confine itself.
/// The registry waits for it (a reload holds the registry's reconcile lock
/// meanwhile), so it is short: module initialisers should do nothing slow.
pub(crate) const HANDSHAKE: Duration = Duration::from_secs(10);

/// Failures within this window count towards marking a module failing.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failures within [`FAILURE_WINDOW`] that mark a module failing.
const FAILING_AFTER: usize = 3;

/// Where the host program is when none is configured: beside the running
/// program, or one directory up from cargo's `deps` and `examples`
/// directories (test binaries and examples run from there; cargo puts the
/// workspace's binaries one level up).
pub fn default_host_program() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dir = exe.as_deref().and_then(Path::parent);
    if let Some(dir) = dir {
        let beside = dir.join(HOST_PROGRAM);
        if beside.is_file() {
            return beside;
        }
        if dir
            .file_name()
            .is_some_and(|n| n == "deps" || n == "examples")
            && let Some(up) = dir.parent()
        {
            let up = up.join(HOST_PROGRAM);
            if up.is_file() {
                return up;
            }
        }
        return beside;
    }
    PathBuf::from(HOST_PROGRAM)
}

/// What a host is started for: one module version and its policy.
#[derive(Debug)]
pub(crate) struct HostSpec {
    pub program: PathBuf,
    pub name: String,
    pub sum: String,
    pub bytes: Arc<[u8]>,
    pub policy: SandboxPolicy,
}

/// How a module's host is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostState {
    /// Its host is up (or being started after a single failure).
    Running,
    /// Its host failed repeatedly within a minute; calls are still tried.
    Failing,
}

impl HostState {
    /// The wire and metrics name: `running` or `failing`.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Running => "running",
            HostState::Failing => "failing",
        }
    }
}

/// Counters of one module version's host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostHealth {
    /// Running or failing.
    pub state: HostState,
    /// Process id of the host, while it is up.
    pub pid: Option<u32>,
    /// Times the host died other than by a timeout.
    pub crashes: u64,
    /// Calls that ran past their timeout (each killed the host).
    pub timeouts: u64,
    /// Times the host was started again.
    pub restarts: u64,
    /// Failures (crashes and timeouts) within the last minute.
    pub recent_failures: usize,
    /// Calls sent and not answered yet.
    pub pending: usize,
    /// What of the sandbox the kernel enforces.
    pub confinement: String,
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    pid: AtomicU32,
    crashes: AtomicU64,
    timeouts: AtomicU64,
    restarts: AtomicU64,
    pending: AtomicUsize,
    failures: Mutex<VecDeque<Instant>>,
    confinement: Mutex<String>,
}

impl Health {
    /// Notes a failure now; returns the failures within the window.
    fn record_failure(&self) -> usize {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        failures.push_back(now);
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
        {
            failures.pop_front();
        }
        failures.len()
    }

    fn recent_failures(&self) -> usize {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        failures
            .iter()
            .filter(|t| now.duration_since(**t) <= FAILURE_WINDOW)
            .count()
    }

    fn snapshot(&self) -> HostHealth {
        let recent = self.recent_failures();
        let pid = self.pid.load(Ordering::Relaxed);
        HostHealth {
            state: if recent >= FAILING_AFTER {
                HostState::Failing
            } else {
                HostState::Running
            },
            pid: (pid != 0).then_some(pid),
            crashes: self.crashes.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            recent_failures: recent,
            pending: self.pending.load(Ordering::Relaxed),
            confinement: self
                .confinement
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

/// The server's handle on one module version's host. Dropping the last
/// handle lets the supervisor finish the calls in flight, then kill the
/// host.
#[derive(Debug)]
pub(crate) struct ModuleHost {
    jobs: mpsc::UnboundedSender<Job>,
    health: Arc<Health>,
    /// Most calls queued for this host before more are answered busy.
    max_pending: usize,
    /// The module's own name and description, from its host.
    pub declared_name: String,
    pub description: String,
}

/// How a host is started and run.
#[derive(Debug, Clone)]
pub(crate) struct HostOptions {
    pub timeout: Duration,
    pub max_pending: usize,
    pub runtime: tokio::runtime::Handle,
}

impl ModuleHost {
    /// Starts a host for `spec` and waits until it is ready. Blocks the
    /// calling thread for as long as the module takes to load.
    pub(crate) fn start(spec: HostSpec, options: &HostOptions) -> Result<ModuleHost, String> {
        let first = process::start(&spec, HANDSHAKE)?;
        let health = Arc::new(Health::default());
        let ready = first.ready.clone();
        *health
            .confinement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ready.confinement.clone();
        tracing::debug!(module = %spec.name, pid = first.pid, confinement = %ready.confinement, "module host ready");
        let (jobs, rx) = mpsc::unbounded_channel();
        let spec = Arc::new(spec);
        let timeout = options.timeout;
        let supervisor = supervisor::Supervisor::new(spec, timeout, rx, health.clone());
        // The host's socket joins the runtime inside the supervisor's task.
        options.runtime.spawn(supervisor.run(first));
        Ok(ModuleHost {
            jobs,
            health,
            max_pending: options.max_pending.max(1),
            declared_name: ready.name,
            description: ready.description,
        })
    }

    /// Queues calls; their answers arrive in order on the returned
    /// receiver. Answers busy at once when the host has too many calls.
    pub(crate) fn submit(&self, calls: Vec<Vec<u8>>) -> mpsc::UnboundedReceiver<Answer> {
        let (answers, rx) = mpsc::unbounded_channel();
        let n = calls.len();
        let pending = self.health.pending.fetch_add(n, Ordering::Relaxed);
        if pending >= self.max_pending {
            self.health.pending.fetch_sub(n, Ordering::Relaxed);
            for _ in 0..n {
                let _ = answers.send(Err(ExecError::Busy));
            }
            return rx;
        }
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { calls, answers }) {
            self.health.pending.fetch_sub(n, Ordering::Relaxed);
            for _ in 0..n {
                let _ = job.answers.send(Err(ExecError::Crashed {
                    signal: None,
                    detail: "the module's host supervisor is gone".into(),
                }));
            }
        }
        rx
    }

    /// How the host is doing.
    pub(crate) fn health(&self) -> HostHealth {
        self.health.snapshot()
    }
}
