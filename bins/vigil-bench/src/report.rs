//! The report: the table printed to stdout, and the description of the
//! machine written into the JSON results.

use serde_json::{Value, json};

use crate::scenarios::Outcome;

pub(crate) fn print_table(outcomes: &[Outcome]) {
    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!();
    println!("{:<width$}  {:<6}  result", "scenario", "goal");
    println!("{}", "-".repeat(width + 60));
    for o in outcomes {
        println!(
            "{:<width$}  {:<6}  {}",
            o.name,
            if o.met { "met" } else { "MISSED" },
            o.summary
        );
    }
}

/// What the figures were measured on.
pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok();
    json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(usize::from).ok(),
        "memory_kib": mem_kib,
        "kernel": kernel,
    })
}
