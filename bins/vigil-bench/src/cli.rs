//! The command line ([`Cli`], the [`Scenario`] names, the help text), and
//! what the bench does and measures.
//!
//! # What it does
//!
//! In a temporary directory it generates the server's identity, an
//! authority key and one Ed25519 identity per simulated client (in
//! parallel over the cores), a trust file listing every client, and a mods
//! directory with `mods/hello` built in release and deployed as
//! `hello.so` (only when the `one-connection` scenario runs). It starts
//! `vigil-server` as a **separate process** on free loopback ports, with
//! an API token, an authority key (so heartbeats flow at the default 5 s)
//! and `--max-connections` above the client count, and measures that
//! process's own CPU time (`/proc/<pid>/stat`, utime + stime) and memory
//! (`VmRSS`). Progress goes to stderr, a table to stdout, and with
//! `--json FILE` one object per scenario (name, goal, figures, `met`).
//!
//! # Simulated clients
//!
//! Each client is one task holding one real mTLS connection with its own
//! identity (`vigil_auth::client_config`), not a `vigil_client::Client`:
//! that one verifies every command and heartbeat (~40 µs of Ed25519 each)
//! and keeps more state, which a real client pays on its own machine but
//! which here would be charged to the two cores the server runs on. A
//! simulated client pings to confirm admission, syncs, then answers every
//! `cmd:exec` with `cmd:ack` (`done`) at once, without verifying (it reads
//! the frame's header and finds the command id by a scan of the payload),
//! and records when its ack was written; it counts heartbeats without
//! verifying them, pings after 30 s without sending (as `vigil-client`
//! does, so the server's 90 s idle timeout does not fire), and reconnects
//! with [`vigil_client::Backoff`], the real client's jittered exponential
//! backoff. Connections are bound to source addresses 127.0.0.2 to
//! 127.0.0.51, so that no single address runs out of ephemeral ports.
//! First connections are ramped (64 in flight) so that starting thousands
//! of clients does not run into the server's handshake timeout;
//! reconnections are not ramped: there only the backoff spreads them.
//!
//! The bench and the server share the machine's cores: every figure
//! includes the clients' side of TLS, which a real deployment would not
//! pay on the server's machine.
//!
//! # Scenarios
//!
//! - `handshakes`: new connections per second with 64 in flight, each a
//!   full TLS 1.3 handshake with client authentication (session
//!   resumption off), a ping answered by the server, and a close.
//! - `one-connection`: `mod:exec` of hello.so on one connection,
//!   sequential (round-trip percentiles) and pipelined with 256 in flight
//!   (execs per second). The sequential round trips come from a blocking
//!   client on its own thread (an async client would add its runtime's
//!   wake-ups to each), first pings (the same path without a module run,
//!   for reference), then execs.
//! - `held`: N idle clients. Memory per connection is the growth of the
//!   server's RSS divided by the clients added: with N above 1,000 the
//!   first 1,000 connect first (for the 1,000-client fan-out) and the
//!   figure is the marginal cost of the remaining N − 1,000, which leaves
//!   out fixed costs and what the fan-outs allocated. Then the server's CPU
//!   over an idle window (20 s, quick 10 s) with heartbeats at 5 s, as a
//!   share of one core; it includes the clients' idle pings.
//! - `fanout`: `POST /send?wait=30` to every client (the server signs
//!   once); latency is the time each client's acknowledgement was written
//!   minus the request's start, on the same clock; also the `/send` wall
//!   time, until the server had collected every ack and answered. At 1,000 clients and at N. The goal is 20 ms p99 at
//!   1,000 and 120 ms at 10,000, linear in between for other sizes.
//! - `slow-consumer`: one more client with a 4 KiB receive buffer stops
//!   reading; commands are sent to it alone (`client_id`, four requests in
//!   flight). Past its window and its queue the server refuses them at
//!   once (`queue_full`): that is the bound, and its time is reported.
//!   They go on (one every 50 ms per request) for 5 s more (10 s full),
//!   or until the server closes the session (the client read nothing for
//!   the write-stall timeout, or its control lane passed its bound);
//!   meanwhile the others get a fan-out after another. Whether the
//!   session was closed is reported, not required: a client that reads
//!   nothing costs the server only its bounded window and queue. Memory is "flat" if the sampled peak RSS grew by at most
//!   8 MiB or 5 %; the others' p99 is "unchanged" if at most twice, or
//!   5 ms above, the p99 before. The filling requests load the server
//!   too, so part of any change is theirs.
//! - `reconnect-storm`: SIGTERM to the server with N attached, start it
//!   again on the same ports, and time until every client has
//!   reconnected and synced, from the new process's start; a histogram per
//!   250 ms shows whether the backoff spread the reconnections. "Re-synced"
//!   is ping + `mod:sync`; re-fetching module bytes (`mod:verify`) is not
//!   part of it.
//!
//! No test asserts a timing: the figures are printed and written to JSON,
//! and docs/benchmarks.md records them with the machine they ran on.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// A scenario's name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    Handshakes,
    OneConnection,
    Held,
    Fanout,
    SlowConsumer,
    ReconnectStorm,
}

pub(crate) const ALL: [Scenario; 6] = [
    Scenario::Handshakes,
    Scenario::OneConnection,
    Scenario::Held,
    Scenario::Fanout,
    Scenario::SlowConsumer,
    Scenario::ReconnectStorm,
];

/// Load a vigil-server process with many simulated mTLS clients.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Shorter windows and 1,000 clients: about a minute.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Simulated clients send no nonces, so the server sends them clock
    /// heartbeats (`vigil-heartbeat-v1`, one signed frame for all) instead
    /// of nonce heartbeats (one signature over a Merkle root, one frame per
    /// client).
    #[arg(long)]
    pub(crate) clock_heartbeats: bool,
    /// The fleet (held, fanout, slow-consumer, reconnect-storm) connects
    /// over the WebSocket transport (`wss://`, the same pinned TLS) instead
    /// of the main port.
    #[arg(long)]
    pub(crate) wss: bool,
    /// Simulated clients [default: 10000, with --quick 1000].
    #[arg(long, value_name = "N")]
    pub(crate) clients: Option<usize>,
    /// Run only this scenario (repeatable) [default: all].
    #[arg(long, value_enum, value_name = "NAME")]
    pub(crate) scenario: Vec<Scenario>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// The vigil-server binary [default: `vigil-server` next to this program].
    #[arg(long, value_name = "PATH")]
    pub(crate) server_bin: Option<PathBuf>,
    /// A built hello module to deploy instead of building mods/hello.
    #[arg(long, value_name = "FILE")]
    pub(crate) module: Option<PathBuf>,
    /// The server's log filter (VIGIL_LOG); its log goes to a file in the
    /// work directory.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub(crate) server_log: String,
    /// Keep the work directory (identities, server log, audit log).
    #[arg(long)]
    pub(crate) keep: bool,
}

const AFTER_HELP: &str = "\
Scenarios: handshakes, one-connection, held, fanout, slow-consumer,
reconnect-storm. The server runs as a separate process on free loopback
ports; its CPU and memory are read from /proc. Progress goes to stderr, the
table to stdout. Exit status: 0 when every scenario ran (whether or not its
goal was met), 1 when one could not run, 2 for bad usage.";
