//! Helpers shared by the tests that run the real binaries: finding and
//! building them, free ports, and child processes that are killed on drop.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of a workspace binary, building the server and client binaries if
/// this test was run on its own (`cargo test -p vigilctl`).
pub(crate) fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = Path::new(env!("CARGO_BIN_EXE_vigilctl"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = dir.join(name);
    // Cargo builds only this package's binaries for its tests: build the
    // server and the client too (a no-op when they are up to date), so a
    // test never runs a stale binary.
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "vigil-server-bin",
                "-p",
                "vigil-client-bin",
            ])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    path
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("VIGIL_LOG").env_remove("RUST_LOG");
    let out = cmd.output().expect("spawn");
    eprintln!(
        "$ {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `vigil-server` process, killed on drop.
pub(crate) struct ServerProcess(pub(crate) Child);

impl ServerProcess {
    /// Starts the server and waits until its log says it listens.
    pub(crate) fn start(args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
        let mut child = Command::new(bin("vigil-server"))
            .args(args)
            .envs(envs.iter().copied())
            .env("VIGIL_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vigil-server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("server| {line}");
                if line.contains("vigil server listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("server started listening");
        ServerProcess(child)
    }

    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn init(dir: &Path, port: u16) -> String {
    let out = run(Command::new(bin("vigilctl"))
        .arg("init")
        .arg(dir)
        .args(["--port", &port.to_string()])
        .args(["--http-port", &free_port().to_string()]));
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8")
}

/// A child process whose stderr lines are collected, killed on drop.
pub(crate) struct Watched {
    pub(crate) child: Child,
    pub(crate) lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Watched {
    pub(crate) fn spawn(cmd: &mut Command, label: &'static str) -> Watched {
        let mut child = cmd
            .env("VIGIL_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{label}| {line}");
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        Watched { child, lines }
    }

    pub(crate) fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub(crate) fn wait_for(&self, needle: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "no {n}x {needle:?} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

pub(crate) fn wait_lines(path: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while lines_in(path) < n {
        assert!(
            Instant::now() < deadline,
            "{} has fewer than {n} lines after {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Watched {
    /// Waits for the process to exit by itself (a hang guard, not a timing
    /// check) and returns its status.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The REST API port `vigilctl init` wrote into `dir/server.toml`.
pub(crate) fn http_port(dir: &Path) -> u16 {
    let text = std::fs::read_to_string(dir.join("server.toml")).expect("server.toml");
    text.lines()
        .find_map(|l| l.strip_prefix("http_port = "))
        .and_then(|p| p.trim().parse().ok())
        .expect("http_port in server.toml")
}

/// `http://127.0.0.1:<http_port>` of an init directory.
pub(crate) fn api_url(dir: &Path) -> String {
    format!("http://127.0.0.1:{}", http_port(dir))
}

/// Appends TOML (e.g. `[commands.NAME]` tables) to `dir/client.toml`.
pub(crate) fn add_to_client_toml(dir: &Path, toml: &str) {
    let path = dir.join("client.toml");
    let mut text = std::fs::read_to_string(&path).expect("client.toml");
    text.push('\n');
    text.push_str(toml);
    std::fs::write(&path, text).expect("write client.toml");
}

/// A `vigilctl` command with no VIGIL_* settings inherited from the
/// environment that runs the tests.
pub(crate) fn vigilctl() -> Command {
    let mut cmd = Command::new(bin("vigilctl"));
    for var in [
        "VIGIL_API",
        "VIGIL_API_TOKEN",
        "VIGIL_API_TOKEN_FILE",
        "VIGIL_DATA_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Starts the server of an init directory, with extra flags.
pub(crate) fn start_server(dir: &Path, extra: &[&str]) -> Watched {
    let config = dir.join("server.toml");
    let server = Watched::spawn(
        Command::new(bin("vigil-server"))
            .arg("--config")
            .arg(&config)
            .args(extra),
        "server",
    );
    server.wait_for("REST API listening", 1, Duration::from_secs(20));
    server
}

/// Starts the client of an init directory and waits until it is connected
/// (the server answered it, so the server lists it).
pub(crate) fn start_client(dir: &Path, extra: &[&str]) -> Watched {
    let client = Watched::spawn(
        Command::new(bin("vigil-client"))
            .arg("--config")
            .arg(dir.join("client.toml"))
            .args(extra),
        "client",
    );
    client.wait_for("server modules synced", 1, Duration::from_secs(20));
    client
}
