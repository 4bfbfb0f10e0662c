//! A child process whose log is captured: its stderr lines are echoed to
//! the test's stderr (prefixed with a label) and kept, to be searched and
//! waited for. It is killed on drop.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use rustix::process::Signal;

use crate::wait::{eventually, until};

/// A child process whose stderr lines are kept; killed on drop.
pub struct Proc {
    /// The process itself, for what the methods here do not cover.
    pub child: Child,
    label: &'static str,
    lines: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("label", &self.label)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Proc {
    /// Starts `cmd` with info-level logs without colours (`VIGIL_LOG=info`,
    /// `NO_COLOR=1`, no `RUST_LOG`), its stdout discarded and its stderr
    /// captured; each line is echoed as `label| line`.
    pub fn spawn(cmd: &mut Command, label: &'static str) -> Proc {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .env("VIGIL_LOG", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{label}| {line}");
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        Proc {
            child,
            label,
            lines,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a log line holds `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    /// How many log lines hold `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The first log line that holds `needle`, if any.
    pub fn line_with(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Waits (on the tokio timer, at most [`WAIT`](crate::wait::WAIT)) until a log line holds
    /// `needle`; that line.
    pub async fn wait_logged(&self, needle: &str) -> String {
        let mut line = None;
        eventually(&format!("{}: never logged {needle:?}", self.label), || {
            line = self.line_with(needle);
            line.is_some()
        })
        .await;
        line.unwrap_or_default()
    }

    /// Waits, blocking, until `n` log lines hold `needle`, at most
    /// `within`.
    pub fn wait_for(&self, needle: &str, n: usize, within: Duration) {
        until(
            &format!("{}: no {n}x {needle:?} within {within:?}", self.label),
            within,
            || self.count(needle) >= n,
        );
    }

    /// As [`Proc::wait_logged`], blocking, at most `within`.
    pub fn wait_line(&self, needle: &str, within: Duration) -> String {
        let mut line = None;
        until(
            &format!("{}: never logged {needle:?}", self.label),
            within,
            || {
                line = self.line_with(needle);
                line.is_some()
            },
        );
        line.unwrap_or_default()
    }

    /// Sends `signal` (`Signal::KILL`, `STOP`, `CONT`, `TERM`...).
    pub fn signal(&self, signal: Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Waits (on the tokio timer, at most [`WAIT`](crate::wait::WAIT)) for the process to
    /// exit; its status.
    pub async fn exited(&mut self) -> ExitStatus {
        let mut status = None;
        let child = &mut self.child;
        eventually(&format!("{}: the process did not exit", self.label), || {
            status = child.try_wait().expect("wait");
            status.is_some()
        })
        .await;
        status.expect("exited")
    }

    /// Waits, blocking, for the process to exit by itself, at most
    /// `within` (a hang guard, not a timing check); its status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut status = None;
        let child = &mut self.child;
        until(
            &format!("{}: still running after {within:?}", self.label),
            within,
            || {
                status = child.try_wait().expect("wait");
                status.is_some()
            },
        );
        status.expect("exited")
    }

    /// Sends SIGTERM and waits, blocking, for the process to exit, at most
    /// `within`; its status.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        self.signal(Signal::TERM);
        self.wait_exit(within)
    }

    /// Resident memory, KiB (from `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Continued first, so that a stopped process dies cleanly.
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = rustix::process::Pid::from_raw(self.pid() as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, Signal::CONT);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
