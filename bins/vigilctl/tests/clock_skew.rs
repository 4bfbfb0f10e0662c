//! Heartbeat freshness without synchronized clocks: a real client whose
//! wall clock is shifted by `faketime` (Debian's `faketime` package, which
//! this test installs with apt-get when it runs as root and it is missing)
//! against a real server. Reliability cases F14 to F16, see
//! docs/reliability.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{START, bin, init, lines_in, run, start_server, vigilctl, wait_lines};
use vigil_test_support::process::{Proc, Signal};

/// The `faketime` program: found, or installed, or the test fails saying
/// what to install. It never skips.
fn faketime() -> PathBuf {
    common::debian_program("faketime", "faketime")
}

/// An init directory whose client fires after 2 s of silence and leaves a
/// line in `fired.log` each time.
fn setup(d: &Path, freshness: &str) -> PathBuf {
    init(d);
    let fired = d.join("fired.log");
    let mut toml = std::fs::read_to_string(d.join("client.toml")).expect("read");
    toml = toml.replace(
        "failsafe_timeout = 15",
        &format!("failsafe_timeout = 2\nheartbeat_freshness = {freshness:?}"),
    );
    toml = toml.replace(
        "[[break_commands]]\ncommand = \"echo\"",
        "[commands.mark]\nprogram = \"echo fired >> \\\"$VIGIL_MARK\\\"\"\nshell = true\n\n[[break_commands]]\ncommand = \"mark\"",
    );
    std::fs::write(d.join("client.toml"), &toml).expect("write");
    fired
}

/// The client of `d`, its wall clock shifted by `shift` (faketime's
/// syntax: `+45s`, `-45s`, `+10m`); its monotonic clock is left alone, as
/// on a machine whose RTC or NTP is wrong.
fn shifted_client(d: &Path, shift: &str, fired: &Path) -> Proc {
    let client = Proc::spawn(
        Command::new(faketime())
            .args(["-f", shift])
            .arg(bin("vigil-client"))
            .args(["--config", d.join("client.toml").to_str().expect("utf8")])
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("VIGIL_MARK", fired),
        "client",
    );
    client.wait_for("server modules synced", 1, START);
    client
}

/// The `clock_skew_ms` the server lists for its one client.
fn listed_skew(d: &Path, server: &common::Server) -> Option<i64> {
    let out = run(vigilctl()
        .arg("clients")
        .args(["--api", &server.api_url(), "--token-file"])
        .arg(d.join("server-data/api-token")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let client = &v["clients"][0];
    assert_eq!(client["heartbeat"], "nonce", "{v}");
    client["clock_skew_ms"].as_i64()
}

/// F14 to F16: with its clock 45 s ahead, 45 s behind or 10 minutes ahead,
/// the client's failsafe stays quiet while the server is healthy, the
/// offset is reported (client log, server's `/v1/clients`), and it fires
/// after the server is SIGSTOPped and after it is killed.
#[test]
fn a_shifted_client_clock_neither_fires_the_failsafe_nor_hides_an_outage() {
    for (shift, offset_ms) in [("+45s", -45_000i64), ("-45s", 45_000), ("+10m", -600_000)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let fired = setup(d, "nonce");
        let server = start_server(d, &["--heartbeat-interval", "0.25"]);
        let client = shifted_client(d, shift, &fired);

        // Healthy: nothing fires over several timeouts.
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(
            lines_in(&fired),
            0,
            "{shift}: fired while the server was healthy"
        );
        let line = client.wait_line("clock is off from the server", START);
        eprintln!("{shift}: {line}");
        vigil_test_support::wait::until("the server lists the client's offset", START, || {
            listed_skew(d, &server).is_some_and(|s| (s - offset_ms).abs() < 5_000)
        });

        // Frozen: beats stop; it fires within its timeout.
        server.proc.signal(Signal::STOP);
        wait_lines(&fired, 1, Duration::from_secs(10));
        server.proc.signal(Signal::CONT);
        client.wait_for("failsafe re-armed", 1, Duration::from_secs(15));

        // Killed: it fires again.
        server.proc.signal(Signal::KILL);
        wait_lines(&fired, 2, Duration::from_secs(10));
        drop(client);
    }
}

/// The finding this replaces, kept as a control: with clock freshness
/// (`vigil-heartbeat-v1`), a client 45 s ahead refuses every beat as stale
/// and fires against a healthy server.
#[test]
fn with_clock_freshness_a_client_45_s_ahead_fires_against_a_healthy_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let fired = setup(d, "clock");
    let _server = start_server(d, &["--heartbeat-interval", "0.25"]);
    let client = shifted_client(d, "+45s", &fired);
    wait_lines(&fired, 1, Duration::from_secs(10));
    assert!(client.logged("heartbeat is stale"), "{:?}", client.lines());
}
