//! The server process's own CPU time and memory, read from `/proc`.

use std::time::Instant;

use anyhow::Context as _;

/// CPU time (user + system) of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after the last `)`. Field 3 (state) is index 0 there,
    // so utime (field 14) is index 11 and stime (field 15) index 12.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} missing", i + 3))
    };
    let ticks = field(11)? + field(12)?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(ticks as f64 / hz as f64)
}

/// Resident set size of a process, in KiB (`VmRSS`).
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size of a process, in KiB (`VmHWM`).
pub(crate) fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, name: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{path}: no {name} line"))
}

/// CPU use of a process over a window of wall time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuWindow {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuWindow {
    /// Starts a window now.
    pub(crate) fn start(pid: u32) -> anyhow::Result<CpuWindow> {
        Ok(CpuWindow {
            pid,
            cpu: cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU seconds used since the start, wall seconds elapsed, and the
    /// share of one core in percent.
    pub(crate) fn finish(&self) -> anyhow::Result<CpuUse> {
        let cpu = cpu_seconds(self.pid)? - self.cpu;
        let wall = self.at.elapsed().as_secs_f64();
        Ok(CpuUse {
            cpu_s: cpu,
            wall_s: wall,
            percent_of_core: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
        })
    }
}

/// What a [`CpuWindow`] measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUse {
    pub(crate) cpu_s: f64,
    pub(crate) wall_s: f64,
    pub(crate) percent_of_core: f64,
}

impl CpuUse {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpu_s": round(self.cpu_s, 3),
            "wall_s": round(self.wall_s, 3),
            "percent_of_one_core": round(self.percent_of_core, 2),
        })
    }
}

/// Rounds for printing in JSON.
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}
