//! Starting a module host process, handing it the module, and learning
//! how it ended.
//!
//! Hosts are forked by one thread that lives as long as the server:
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked a child ends, so
//! a host forked by a short-lived worker thread would be killed with it.
//! The host's standard input is its socket to the server; its standard
//! output and error go to a pipe that a thread per host reads into the
//! server's log, keeping the last lines to explain a crash.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use super::{HostSpec, wire};
use crate::ExecError;

/// Lines of a host's output kept to explain how it ended.
const KEPT_LINES: usize = 16;
/// Longest line of a host's output that is logged whole.
const MAX_LINE: usize = 1024;
/// Lines of a host's output logged at once before the rate applies.
const LOG_BURST: f64 = 50.0;
/// Lines of a host's output logged per second after a burst; the rest are
/// counted, so that a module printing in a loop cannot fill the log.
const LOG_RATE: f64 = 10.0;

/// How a host process ended.
#[derive(Debug, Clone)]
pub(crate) struct Exit {
    pub status: ExitStatus,
    /// Its last lines of output.
    pub last_lines: Vec<String>,
}

impl Exit {
    /// The signal that ended it, by name.
    pub(super) fn signal(&self) -> Option<String> {
        self.status.signal().map(signal_name)
    }

    /// Whether its last words say an allocation failed (what Rust's
    /// allocation error handler prints before it aborts).
    pub(super) fn allocation_failed(&self) -> Option<&str> {
        self.last_lines
            .iter()
            .rev()
            .find(|l| l.contains("memory allocation of") && l.contains("failed"))
            .map(String::as_str)
    }
}

/// The error for the call a host was running when it ended with `exit`
/// (`None`: its end was not seen); `memory_mib` is its address-space limit.
pub(crate) fn crash_error(exit: Option<&Exit>, memory_mib: u64) -> ExecError {
    let Some(exit) = exit else {
        return ExecError::Crashed {
            signal: None,
            detail: "the module host closed its socket".into(),
        };
    };
    if let Some(line) = exit.allocation_failed() {
        return ExecError::Limit(format!("{line} (the module may use {} MiB)", memory_mib));
    }
    match exit.signal() {
        Some(signal) => {
            let detail = match signal.as_str() {
                "SIGSYS" => {
                    format!("{signal}: it made a system call its sandbox does not allow")
                }
                "SIGSEGV" => format!("{signal}: invalid memory access"),
                "SIGBUS" => format!("{signal}: bus error"),
                "SIGABRT" => format!("{signal}: it aborted"),
                "SIGKILL" => format!("{signal}: killed"),
                _ => signal.clone(),
            };
            ExecError::Crashed {
                signal: Some(signal),
                detail,
            }
        }
        None => ExecError::Crashed {
            signal: None,
            detail: format!("its host exited ({})", exit.status),
        },
    }
}

/// Names a signal number.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        n => return format!("signal {n}"),
    };
    name.to_owned()
}

/// Where a host's end is reported: set once by its output thread.
#[derive(Debug, Default)]
pub(crate) struct ExitSlot {
    exit: Mutex<Option<Exit>>,
    notify: tokio::sync::Notify,
}

impl ExitSlot {
    fn set(&self, exit: Exit) {
        *self
            .exit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(exit);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// The exit, if it happened.
    pub(super) fn get(&self) -> Option<Exit> {
        self.exit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits for the exit, at most `limit`.
    pub(super) async fn wait(&self, limit: Duration) -> Option<Exit> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if let Some(exit) = self.get() {
                return Some(exit);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get();
            }
        }
    }

    /// Waits for the exit from a blocking thread, at most `limit`.
    fn wait_blocking(&self, limit: Duration) -> Option<Exit> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(exit) = self.get() {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A running host that loaded its module and is confined.
#[derive(Debug)]
pub(crate) struct Process {
    /// The socket to the host (blocking mode).
    pub stream: UnixStream,
    pub pid: u32,
    /// Kills the host when the last clone is dropped.
    pub killer: Arc<Killer>,
    pub exit: Arc<ExitSlot>,
    /// What the host said when it was ready.
    pub ready: wire::Ready,
}

/// Sends SIGKILL to a host through its pidfd (which cannot name another
/// process once the host is reaped), and does so when dropped.
#[derive(Debug)]
pub(crate) struct Killer {
    pidfd: Option<OwnedFd>,
    pid: Option<rustix::process::Pid>,
    /// Set once the host is reaped: its pid may then name another process.
    exit: Arc<ExitSlot>,
}

impl Killer {
    pub(super) fn kill(&self) {
        use rustix::process::Signal;
        match (&self.pidfd, self.pid) {
            (Some(fd), _) => {
                let _ = rustix::process::pidfd_send_signal(fd, Signal::KILL);
            }
            // Without a pidfd (a kernel before 5.3): by pid, while the
            // host is not reaped, so the pid is still its own.
            (None, Some(pid)) if self.exit.get().is_none() => {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
            (None, _) => {}
        }
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct SpawnRequest {
    program: PathBuf,
    stdin: OwnedFd,
    reply: mpsc::Sender<std::io::Result<(Child, std::io::PipeReader)>>,
}

/// The thread that forks every host; it never ends.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("vigil-module-spawner".into())
            .spawn(move || {
                for request in rx {
                    let _ = request
                        .reply
                        .send(spawn_now(request.program, request.stdin));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the module host spawner thread");
        }
        Mutex::new(tx)
    })
}

fn spawn_now(program: PathBuf, stdin: OwnedFd) -> std::io::Result<(Child, std::io::PipeReader)> {
    let (out, out_w) = std::io::pipe()?;
    let err_w = out_w.try_clone()?;
    let mut command = Command::new(program);
    command
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let child = command.spawn()?;
    // Dropping the command closes the parent's copies of the pipe's write
    // end, so the reader sees the end when the host exits.
    drop(command);
    Ok((child, out))
}

/// Starts a host for `spec`, sends it the module and waits for it to be
/// ready, at most `handshake`. Blocks the calling thread.
pub(crate) fn start(spec: &HostSpec, handshake: Duration) -> Result<Process, String> {
    let program = &spec.program;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
    let (reply, answer) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send(SpawnRequest {
            program: program.clone(),
            stdin: OwnedFd::from(theirs),
            reply,
        })
        .map_err(|_| "the module host spawner thread is gone".to_owned())?;
    let (child, output) = answer
        .recv()
        .map_err(|_| "the module host spawner thread is gone".to_owned())?
        .map_err(|e| {
            format!(
                "cannot start the module host {}: {e} (build it with `cargo build -p vigil-modules --bin vigil-module-host`, or name it with --module-host)",
                program.display()
            )
        })?;
    let pid = child.id();
    let raw_pid = rustix::process::Pid::from_raw(pid as i32);
    let pidfd = raw_pid
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let exit = Arc::new(ExitSlot::default());
    let killer = Arc::new(Killer {
        pidfd,
        pid: raw_pid,
        exit: exit.clone(),
    });
    watch(child, output, spec.name.clone(), exit.clone());
    let failed = |reason: String| -> String {
        killer.kill();
        match exit.wait_blocking(Duration::from_secs(2)) {
            Some(e) => {
                let how = match e.signal() {
                    Some(s) => format!("killed by {s}"),
                    None => format!("exited with {}", e.status),
                };
                let said = e
                    .last_lines
                    .last()
                    .map(|l| format!("; it said: {l}"))
                    .unwrap_or_default();
                format!("{reason} (the module host {how}{said})")
            }
            None => reason,
        }
    };
    let stream = ours;
    let deadline = Instant::now() + handshake;
    if let Err(e) = stream.set_write_timeout(Some(handshake)) {
        return Err(failed(format!("cannot set up the module host socket: {e}")));
    }
    let load = wire::Load {
        name: spec.name.clone(),
        sum: spec.sum.clone(),
        parent: std::process::id(),
        policy: spec.policy.clone(),
    };
    if let Err(e) = (&stream).write_all(&wire::load_frame(&load, &spec.bytes)) {
        return Err(failed(format!("cannot send the module to its host: {e}")));
    }
    let mut body = Vec::new();
    // One deadline for the whole answer, however it trickles in.
    let mut reader = BufReader::new(Deadline {
        stream: &stream,
        until: deadline,
    });
    let ready = match wire::read_frame(&mut reader, &mut body, wire::MAX_READY) {
        Ok(Some(wire::READY)) => serde_json::from_slice::<wire::Ready>(&body)
            .map_err(|e| failed(format!("the module host answered badly: {e}")))?,
        Ok(Some(wire::LOAD_ERROR)) => {
            return Err(failed(String::from_utf8_lossy(&body).into_owned()));
        }
        Ok(Some(tag)) => return Err(failed(format!("the module host answered {tag:#x}"))),
        Ok(None) => return Err(failed("the module host ended while loading".to_owned())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(failed(format!(
                "the module did not load within {handshake:?}"
            )));
        }
        Err(e) => return Err(failed(format!("the module host ended while loading: {e}"))),
    };
    drop(reader);
    let set = stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None));
    if let Err(e) = set {
        return Err(failed(format!("cannot set up the module host socket: {e}")));
    }
    Ok(Process {
        stream,
        pid,
        killer,
        exit,
        ready,
    })
}

/// Reads the host's output into the log until it ends, then reaps it.
fn watch(mut child: Child, output: std::io::PipeReader, name: String, exit: Arc<ExitSlot>) {
    let pid = child.id();
    let thread = std::thread::Builder::new()
        .name(format!("vigil-module-{pid}"))
        .spawn(move || {
            let mut last = VecDeque::with_capacity(KEPT_LINES);
            let mut reader = BufReader::new(output);
            let mut line = Vec::new();
            let mut tokens = LOG_BURST;
            let mut refilled = Instant::now();
            let mut dropped = 0u64;
            loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                let now = Instant::now();
                tokens = (tokens + now.duration_since(refilled).as_secs_f64() * LOG_RATE)
                    .min(LOG_BURST);
                refilled = now;
                if tokens >= 1.0 {
                    tokens -= 1.0;
                    if dropped > 0 {
                        tracing::warn!(module = %name, pid, dropped, "module output not logged: {dropped} lines");
                        dropped = 0;
                    }
                    tracing::info!(module = %name, pid, "module output: {text}");
                } else {
                    if dropped == 0 {
                        tracing::warn!(module = %name, pid, "module output not logged from here: more than {LOG_RATE} lines per second");
                    }
                    dropped += 1;
                }
                if last.len() == KEPT_LINES {
                    last.pop_front();
                }
                last.push_back(text);
            }
            if dropped > 0 {
                tracing::warn!(module = %name, pid, dropped, "module output not logged: {dropped} lines");
            }
            let status = match child.wait() {
                Ok(status) => status,
                Err(e) => {
                    tracing::error!(module = %name, pid, error = %e, "cannot reap the module host");
                    return;
                }
            };
            tracing::debug!(module = %name, pid, %status, "module host ended");
            exit.set(Exit {
                status,
                last_lines: last.into(),
            });
        });
    if let Err(e) = thread {
        tracing::error!(error = %e, "cannot start a thread to follow a module host");
    }
}

use std::io::Read as _;

/// Reads from the host's socket until a deadline: each read may wait only
/// for what is left of it.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl std::io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}
