//! The real binaries under systemd's notify protocol, driven through a real
//! `NOTIFY_SOCKET` (a unix datagram socket this test listens on, as systemd
//! does): `READY=1` only once the server serves, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` while it is healthy, no more pings while its audit
//! writer hangs on a frozen disk (a real ext4 file system frozen with
//! `fsfreeze`, on a loop device) or its accept loop is frozen by fault
//! injection, pings again once the disk thaws, and `STOPPING=1` on
//! shutdown. The client likewise. Needs root (mount, fsfreeze); the
//! programs are installed with apt-get when missing, or the test fails
//! saying what to install.

mod common;

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{START, Server, bin, init, run};
use vigil_test_support::process::{Proc, Signal};
use vigil_test_support::server::point_client_config;
use vigil_test_support::wait::until;

/// `WATCHDOG_USEC` given to the programs: they ping every second.
const WATCHDOG: Duration = Duration::from_secs(2);

/// What arrived on a notify socket, and when.
#[derive(Clone, Default)]
struct Notes {
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Notes {
    /// Listens on a datagram socket at `path`, as systemd does.
    fn listen(path: &Path) -> Notes {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        let notes = Notes::default();
        let got = notes.got.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let now = Instant::now();
                let mut got = got.lock().expect("lock");
                for line in text.lines() {
                    got.push((now, line.to_owned()));
                }
            }
        });
        notes
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.got.lock().expect("lock").clone()
    }

    /// Times of the lines equal to `line`.
    fn times(&self, line: &str) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(_, l)| l == line)
            .map(|(t, _)| t)
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.times(line).len()
    }

    /// Waits for `n` lines equal to `line` in all.
    fn wait_for(&self, line: &str, n: usize, within: Duration) {
        until(
            &format!("{n} × {line:?} on the notify socket"),
            within,
            || self.count(line) >= n,
        );
    }

    /// Waits for a line starting with `prefix` and containing `part`.
    fn wait_status(&self, part: &str, within: Duration) -> String {
        let mut found = None;
        until(
            &format!("a STATUS= with {part:?} on the notify socket"),
            within,
            || {
                found = self
                    .all()
                    .into_iter()
                    .map(|(_, l)| l)
                    .find(|l| l.starts_with("STATUS=") && l.contains(part));
                found.is_some()
            },
        );
        found.unwrap_or_default()
    }

    /// Waits `quiet` and says whether a `WATCHDOG=1` arrived meanwhile
    /// after `grace` (one ping may already have been on its way).
    fn pinged_during(&self, grace: Duration, quiet: Duration) -> usize {
        let from = Instant::now() + grace;
        thread::sleep(grace + quiet);
        self.times("WATCHDOG=1")
            .into_iter()
            .filter(|t| *t > from)
            .count()
    }
}

/// An ext4 file system in a file, loop-mounted without atime updates (a
/// read on a frozen file system must not block), and frozen on demand.
/// Dropping it thaws and unmounts it, so that nothing stays blocked.
struct FreezableDisk {
    mount: PathBuf,
}

impl FreezableDisk {
    fn new(image: &Path, mount: &Path) -> FreezableDisk {
        let mkfs = common::debian_program("mkfs.ext4", "e2fsprogs");
        common::debian_program("fsfreeze", "util-linux");
        let f = std::fs::File::create(image).expect("image");
        f.set_len(64 << 20).expect("size the image");
        let out = run(Command::new(mkfs).arg("-q").arg(image));
        assert!(out.status.success(), "mkfs.ext4 failed");
        std::fs::create_dir_all(mount).expect("mount point");
        let out = run(Command::new("mount")
            .args(["-o", "loop,noatime"])
            .arg(image)
            .arg(mount));
        assert!(
            out.status.success(),
            "this test mounts a loop device (as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FreezableDisk {
            mount: mount.to_owned(),
        }
    }

    fn freeze(&self) {
        let out = run(Command::new("fsfreeze").arg("-f").arg(&self.mount));
        assert!(out.status.success(), "fsfreeze -f failed");
    }

    fn thaw(&self) {
        let _ = run(Command::new("fsfreeze").arg("-u").arg(&self.mount));
    }
}

/// Thaws a disk when dropped: declared after the processes that write to
/// it, so that a failing test thaws it before it kills them (a process
/// blocked on a frozen file system cannot be reaped).
struct Thaw<'a>(&'a FreezableDisk);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        self.thaw();
        let _ = run(Command::new("umount").arg("-l").arg(&self.mount));
    }
}

fn as_root() -> bool {
    run(Command::new("id").arg("-u")).stdout == b"0\n"
}

/// The server of the init directory `d` under a watchdog of [`WATCHDOG`],
/// notifying `d/notify.sock`, with `fault` armed for SIGUSR1.
fn notified_server(d: &Path, fault: &str) -> Server {
    let mut cmd = Command::new(bin("vigil-server"));
    cmd.arg("--config")
        .arg(d.join("server.toml"))
        .args(["--heartbeat-interval", "0.25"])
        .env("NOTIFY_SOCKET", d.join("notify.sock"))
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env("VIGIL_FAULT_INJECTION", fault);
    Server::start(&mut cmd, "server")
}

#[test]
fn the_server_is_ready_once_it_serves_pings_while_healthy_and_stops_pinging_when_stuck() {
    assert!(
        as_root(),
        "this test mounts and freezes a file system: run it as root"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    // The server's data directory (its audit log) on a disk that can hang.
    let disk = FreezableDisk::new(&d.join("disk.img"), &d.join("server-data"));
    let notes = Notes::listen(&d.join("notify.sock"));
    let server = notified_server(d, "accept-loop");
    let thaw_first = Thaw(&disk);

    // Ready once, first, and only when connections are served: a client
    // started right after it connects.
    notes.wait_for("READY=1", 1, START);
    let first = notes.all().first().map(|(_, l)| l.clone());
    assert_eq!(first.as_deref(), Some("READY=1"), "{:?}", notes.all());
    point_client_config(&d.join("client.toml"), server.addr);
    let client = common::start_client(d, &[]);
    notes.wait_status("serving 1 client", START);
    notes.wait_for("WATCHDOG=1", 3, START);

    // The disk hangs under the audit writer: the next record blocks it
    // (a refused handshake is recorded), and the pings stop.
    disk.freeze();
    let mut stranger = std::net::TcpStream::connect(server.addr).expect("connect");
    stranger
        .write_all(b"not a TLS client hello\r\n\r\n")
        .expect("write");
    drop(stranger);
    let pinged = notes.pinged_during(WATCHDOG, WATCHDOG * 2);
    assert_eq!(pinged, 0, "pinged while the audit writer hung");
    let status = notes.wait_status("audit_writer", START);
    assert!(status.starts_with("STATUS=stuck"), "{status}");
    server.proc.wait_line("the server is stuck", START);

    // Thawed, the writer finishes and the pings resume.
    disk.thaw();
    let before = notes.count("WATCHDOG=1");
    notes.wait_for("WATCHDOG=1", before + 2, START);
    server.proc.wait_line("every part answers again", START);

    // The accept loop frozen by fault injection: no more pings.
    server.proc.signal(Signal::USR1);
    server.proc.wait_line("fault injected", START);
    let pinged = notes.pinged_during(WATCHDOG, WATCHDOG * 2);
    assert_eq!(pinged, 0, "pinged while the accept loop was frozen");
    notes.wait_status("accept_loop", START);

    assert_eq!(notes.count("READY=1"), 1);
    assert_eq!(notes.count("STOPPING=1"), 0);
    drop(client);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(notes.count("STOPPING=1"), 1, "{:?}", notes.all());
    drop(thaw_first);
    drop(disk);
}

#[test]
fn a_frozen_heartbeat_task_stops_the_pings_and_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    let notes = Notes::listen(&d.join("notify.sock"));
    let server = notified_server(d, "heartbeats");
    notes.wait_for("WATCHDOG=1", 2, START);
    server.proc.signal(Signal::USR1);
    server.proc.wait_line("fault injected", START);
    let pinged = notes.pinged_during(WATCHDOG, WATCHDOG * 2);
    assert_eq!(pinged, 0, "pinged while the heartbeat task was frozen");
    let status = notes.wait_status("heartbeats", START);
    assert!(status.starts_with("STATUS=stuck"), "{status}");
    assert!(server.terminate().success());
}

#[test]
fn the_client_is_ready_while_trying_pings_from_its_supervisor_and_says_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    let notes = Notes::listen(&d.join("notify.sock"));
    // No server yet: trying is ready (the failsafe is armed).
    point_client_config(&d.join("client.toml"), "127.0.0.1:9");
    let client = |d: &Path| {
        let mut cmd = Command::new(bin("vigil-client"));
        cmd.arg("--config")
            .arg(d.join("client.toml"))
            .env("NOTIFY_SOCKET", d.join("notify.sock"))
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string());
        Proc::spawn(&mut cmd, "client")
    };
    let trying = client(d);
    notes.wait_for("READY=1", 1, START);
    notes.wait_status("connecting", START);
    notes.wait_for("WATCHDOG=1", 2, START);
    // Stopped (SIGSTOP: the whole process hangs), it pings no more.
    trying.signal(Signal::STOP);
    let pinged = notes.pinged_during(WATCHDOG, WATCHDOG);
    assert_eq!(pinged, 0, "pinged while stopped");
    trying.signal(Signal::CONT);
    let status = trying.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert_eq!(notes.count("STOPPING=1"), 1, "{:?}", notes.all());

    // With its server up, the status names it.
    let server = common::start_server(d, &[]);
    let connected = client(d);
    connected.wait_for("server modules synced", 1, START);
    notes.wait_status(&format!("connected to {}", server.addr), START);
    assert_eq!(notes.count("READY=1"), 2);
    let status = connected.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert_eq!(notes.count("STOPPING=1"), 2);
}

/// Every line of `lines` as a JSON object (the test fails on one that is
/// not).
fn json_lines(label: &str, lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{label}: a log line is not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "{label}: {l}");
            v
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_field_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    common::add_to_client_toml(
        d,
        "[commands.greet]\nprogram = \"echo\"\nargs = [\"hello\"]\n",
    );
    let server = common::start_server(d, &["--log-format", "json"]);
    let client = common::start_client(d, &["--log-format", "json"]);
    let fp = String::from_utf8(
        run(common::vigilctl()
            .arg("fingerprint")
            .arg(d.join("client.crt")))
        .stdout,
    )
    .expect("utf-8")
    .trim()
    .to_owned();
    let out = run(common::vigilctl()
        .args(["--log-format", "json", "send", "greet", "--wait", "10"])
        .args(["--api", &server.api_url()])
        .arg("--data-dir")
        .arg(d.join("server-data")));
    assert!(out.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("answer");
    let command_id = answer["command_id"]
        .as_str()
        .expect("command_id")
        .to_owned();
    client.wait_line("command ran", START);
    server.proc.wait_line("audit record written", START);

    let lines = json_lines("server", &server.proc.lines());
    // The session's span names the session and the client's full key.
    let connected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "client connected")
        .expect("a connected line");
    assert_eq!(connected["span"]["name"], "session", "{connected}");
    assert_eq!(connected["span"]["client"], fp.as_str(), "{connected}");
    assert!(connected["span"]["session"].is_u64(), "{connected}");
    assert_eq!(connected["level"], "INFO");
    // The issued command: its id and its place in the audit chain.
    let issued = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "audit record written"
                && l["fields"]["kind"] == "command.issued"
        })
        .expect("an audit line for the command");
    assert_eq!(issued["fields"]["command_id"], command_id.as_str());
    let seq = issued["fields"]["audit_seq"].as_u64().expect("audit_seq");
    let audit = std::fs::read_to_string(d.join("server-data/audit.jsonl")).expect("audit log");
    let record: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("record"))
        .find(|r| r["seq"] == seq)
        .expect("the record at audit_seq");
    assert_eq!(record["kind"], "command.issued");
    assert_eq!(record["details"]["command_id"], command_id.as_str());

    let client_lines = json_lines("client", &client.lines());
    assert!(
        client_lines
            .iter()
            .any(|l| l["fields"]["command_id"] == command_id.as_str()),
        "the client logs the command's id"
    );
    drop(client);
    server.terminate();
}

/// The unit file `name` of `packaging/systemd/`.
fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `unit` with its `ExecStart=/usr/bin/PROGRAM` pointed at the program
/// this build made (the unit is otherwise as shipped), written into `dir`.
fn unit_here(dir: &Path, name: &str, program: &str) -> PathBuf {
    let text = unit(name).replace(
        &format!("/usr/bin/{program}"),
        &bin(program).display().to_string(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write unit");
    path
}

#[test]
fn the_unit_files_verify_and_are_hardened() {
    let analyze = common::debian_program("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, program) in [
        ("vigil-server.service", "vigil-server"),
        ("vigil-client.service", "vigil-client"),
    ] {
        let path = unit_here(dir.path(), name, program);
        let text = unit(name);
        for line in [
            "Type=notify",
            "WatchdogSec=",
            "Restart=on-failure",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/vigil",
            "NoNewPrivileges=true",
            "LimitCORE=0",
            "LimitNOFILE=",
            "SystemCallFilter=@system-service",
            "User=vigil",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{name} lacks {line}"
            );
        }
        // verify exits 0 on unknown keys, saying so on stderr: both count.
        let out = run(Command::new(&analyze).arg("verify").arg(&path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(
            !stderr.contains(name),
            "systemd-analyze verify complains about {name}: {stderr}"
        );
        let out = run(Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path));
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in {text}"));
        eprintln!("{name}: systemd-analyze security exposure {exposure}");
        assert!(exposure <= 2.0, "{name} exposure {exposure}: {text}");
    }
}

/// The system calls a unit's `SystemCallFilter=` lines allow, as systemd
/// reads them (the first line an allow-list): in order, each line adds its
/// names and groups (expanded by `systemd-analyze syscall-filter`), or a
/// `~` line takes them away.
fn allowed_syscalls(unit: &str) -> Vec<String> {
    let analyze = common::debian_program("systemd-analyze", "systemd");
    let listing = run(Command::new(analyze).arg("syscall-filter")).stdout;
    let listing = String::from_utf8_lossy(&listing);
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in listing.lines() {
        let item = line.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            current = Some(item.to_owned());
            groups.entry(item.to_owned()).or_default();
        } else if let Some(g) = &current {
            groups.entry(g.clone()).or_default().push(item.to_owned());
        }
    }
    fn expand(
        name: &str,
        groups: &std::collections::HashMap<String, Vec<String>>,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        match groups.get(name) {
            Some(members) => {
                for m in members {
                    expand(m, groups, out);
                }
            }
            None if !name.starts_with('@') => {
                out.insert(name.to_owned());
            }
            None => panic!("unknown system call group {name}"),
        }
    }
    let mut allowed = std::collections::BTreeSet::new();
    for line in unit.lines() {
        let Some(value) = line.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        let (deny, names) = match value.strip_prefix('~') {
            Some(names) => (true, names),
            None => (false, value),
        };
        let mut these = std::collections::BTreeSet::new();
        for name in names.split_whitespace() {
            expand(name, &groups, &mut these);
        }
        if deny {
            allowed.retain(|c| !these.contains(c));
        } else {
            allowed.extend(these);
        }
    }
    allowed.into_iter().collect()
}

/// Runs a program under a seccomp filter that allows only the system calls
/// listed in the file `argv[1]` and fails every other with EPERM (the
/// unit's `SystemCallErrorNumber=EPERM`), then execs `argv[2:]`.
const UNDER_FILTER: &str = r#"
import errno, os, sys
import seccomp
allowed = open(sys.argv[1]).read().split()
f = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
for name in allowed:
    try:
        f.add_rule(seccomp.ALLOW, name)
    except Exception:
        pass  # not a system call of this architecture
f.load()
os.execv(sys.argv[2], sys.argv[2:])
"#;

/// Debian's Python with its `seccomp` module (the python3-seccomp
/// package), installed when missing.
fn python_seccomp() -> PathBuf {
    let python = PathBuf::from("/usr/bin/python3");
    let has = || {
        Command::new(&python)
            .args(["-c", "import seccomp"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has() {
        assert!(
            as_root(),
            "this test needs Debian's python3-seccomp (apt-get install python3-seccomp)"
        );
        eprintln!("python3-seccomp is missing: installing it (apt-get install -y python3-seccomp)");
        let out = run(Command::new("apt-get")
            .args(["install", "-y", "python3-seccomp"])
            .env("DEBIAN_FRONTEND", "noninteractive"));
        assert!(
            out.status.success() && has(),
            "apt-get install -y python3-seccomp failed"
        );
    }
    python
}

/// `program ARGS` under the system-call filter `allowed`.
fn filtered(dir: &Path, tag: &str, allowed: &[String], program: &str) -> Command {
    let list = dir.join(format!("{tag}.syscalls"));
    std::fs::write(&list, allowed.join("\n")).expect("write the list");
    let script = dir.join("under-filter.py");
    std::fs::write(&script, UNDER_FILTER).expect("write the wrapper");
    let mut cmd = Command::new(python_seccomp());
    cmd.arg(script).arg(list).arg(bin(program));
    cmd
}

#[test]
fn modules_run_and_commands_are_verified_under_the_units_system_call_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    vigil_modules::dev::deploy(&common::hello_so(), &d.join("mods"), "hello.so").expect("deploy");
    let server_calls = allowed_syscalls(&unit("vigil-server.service"));
    let client_calls = allowed_syscalls(&unit("vigil-client.service"));
    assert!(server_calls.iter().any(|c| c == "landlock_restrict_self"));

    let mut cmd = filtered(d, "server", &server_calls, "vigil-server");
    cmd.arg("--config").arg(d.join("server.toml"));
    let server = Server::start(&mut cmd, "server");
    point_client_config(&d.join("client.toml"), server.addr);
    let mut exec = filtered(d, "client", &client_calls, "vigil-client");
    exec.arg("--config")
        .arg(d.join("client.toml"))
        .args(["exec", "hello.so", "world"]);
    let out = run(&mut exec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello, world!");
    server.terminate();

    // Without the module host's extra system calls, its confinement
    // fails and it refuses to run the module (it fails closed): the line
    // in the unit is what makes modules work.
    let bare: Vec<String> = server_calls
        .iter()
        .filter(|c| !c.starts_with("landlock_") && !["seccomp", "capset"].contains(&c.as_str()))
        .cloned()
        .collect();
    let mut cmd = filtered(d, "bare", &bare, "vigil-server");
    cmd.arg("--config").arg(d.join("server.toml"));
    let server = Server::start(&mut cmd, "server");
    point_client_config(&d.join("client.toml"), server.addr);
    let mut exec = Command::new(bin("vigil-client"));
    exec.arg("--config")
        .arg(d.join("client.toml"))
        .args(["exec", "hello.so", "world"]);
    let out = run(&mut exec);
    assert!(!out.status.success(), "a module ran without its sandbox");
    server.terminate();
}

/// A histogram's `_count` in a metrics text.
fn histogram_count(text: &str, name: &str) -> u64 {
    let prefix = format!("{name}_count ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}_count in {text}"))
}

#[test]
fn metrics_pass_promtool_and_the_latency_histograms_count_what_happened() {
    let promtool = common::debian_program("promtool", "prometheus");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    common::add_to_client_toml(
        d,
        "[commands.greet]\nprogram = \"echo\"\nargs = [\"hello\"]\n",
    );
    vigil_modules::dev::deploy(&common::hello_so(), &d.join("mods"), "hello.so").expect("deploy");
    let server = common::start_server(d, &[]);
    let client = common::start_client(d, &[]);
    let out = run(common::vigilctl()
        .args(["send", "greet", "--wait", "10"])
        .args(["--api", &server.api_url()])
        .arg("--data-dir")
        .arg(d.join("server-data")));
    assert!(out.status.success());
    let out = run(Command::new(bin("vigil-client"))
        .arg("--config")
        .arg(d.join("client.toml"))
        .args(["exec", "hello.so", "world"]));
    assert!(out.status.success());
    let token = std::fs::read_to_string(d.join("server-data/api-token")).expect("token");
    let scrape = |accept: &str| {
        let raw = vigil_test_support::http::exchange(
            server.api,
            format!(
                "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                 Authorization: Bearer {}\r\n{accept}\r\n",
                token.trim()
            )
            .as_bytes(),
        );
        let raw = String::from_utf8(raw).expect("utf-8");
        let (head, body) = raw.split_once("\r\n\r\n").expect("an answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        (head.to_ascii_lowercase(), body.to_owned())
    };

    // The Prometheus text format, as promtool checks it (lint included).
    let (head, text) = scrape("");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let checked = check.wait_with_output().expect("promtool ran");
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // The same names as before the library (one documented rename).
    for sample in [
        "vigil_connections 1",
        "vigil_commands_total{outcome=\"done\"} 1",
        "vigil_handshakes_total{result=\"ok\"}",
        "vigil_module_host_restarts_total{module=\"hello.so\"}",
        "vigil_audit_writable 1",
        "vigil_clients_clock_skew_max_seconds",
    ] {
        assert!(text.contains(sample), "no {sample} in {text}");
    }
    assert_eq!(histogram_count(&text, "vigil_send_duration_seconds"), 1);
    assert!(histogram_count(&text, "vigil_fanout_duration_seconds") >= 1);
    assert!(histogram_count(&text, "vigil_exec_duration_seconds") >= 1);

    // The Grafana dashboard in docs/ queries only what is served, in
    // PromQL that Prometheus parses (promtool checks each as a rule).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana-dashboard.json"),
        )
        .expect("docs/grafana-dashboard.json"),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("vigil_"))
        {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "the dashboard queries {name}, which /metrics does not serve"
            );
        }
        let quoted = serde_json::to_string(&expr.replace("$instance", ".*")).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {quoted}\n"
        ));
    }
    let rules_path = d.join("dashboard-rules.yml");
    std::fs::write(&rules_path, rules).expect("write rules");
    let out = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules_path));
    assert!(out.status.success(), "a dashboard query does not parse");

    // OpenMetrics for a scraper that asks for it.
    let (head, open) = scrape("Accept: application/openmetrics-text; version=1.0.0\r\n");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE vigil_commands counter"), "{open}");
    drop(client);
    server.terminate();
}
