//! Watching a host that has no call running: a module can leave a thread
//! spinning after its call returned, which no call's timeout stops.

use std::time::Duration;

use tokio::time::Instant;

/// How often a host with no call running is checked for CPU use: a
/// module can leave a thread spinning after its call returned, which no
/// call's timeout would stop.
pub(crate) const IDLE_CHECK: Duration = Duration::from_secs(2);

/// The last CPU check of the host.
pub(crate) struct IdleCheck {
    pub(crate) at: Instant,
    /// The host's CPU time then (user and system), in clock ticks.
    pub(crate) ticks: Option<u64>,
    /// No call was in flight then.
    pub(crate) idle: bool,
    /// A call was written since.
    pub(crate) written: bool,
}

/// CPU time of process `pid` (user and system), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is the
    // 3rd field, utime the 14th and stime the 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
