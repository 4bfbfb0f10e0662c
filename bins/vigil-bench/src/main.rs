//! `vigil-bench`: load a real `vigil-server` with many simulated mTLS
//! clients and measure what it costs the server.
//!
//! ```sh
//! cargo build --release -p vigil-bench -p vigil-server-bin
//! target/release/vigil-bench --quick --json bench.json   # about a minute
//! target/release/vigil-bench                             # 10,000 clients
//! ```
//!
//! What it does and measures (the setup, the simulated clients, the
//! scenarios) is explained in the docs of the `cli` module.

mod blocking;
mod cli;
mod fleet;
mod http;
mod procstat;
mod report;
mod runner;
mod scenarios;
mod setup;
mod stats;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(runner::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
