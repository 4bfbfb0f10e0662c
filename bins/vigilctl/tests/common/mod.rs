//! Helpers for the tests that run the real binaries, over the workspace's
//! shared ones (`vigil-test-support`): this package's binaries, `vigilctl
//! init` directories, and their server started on port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use vigil_test_support::process::Proc;
use vigil_test_support::server::{Listener, bound_blocking, point_client_config};

/// Longest wait for a child to start listening, or to be connected.
pub(crate) const START: Duration = Duration::from_secs(20);

/// Path of a workspace binary, building the server and client binaries if
/// this test was run on its own (`cargo test -p vigilctl`): see
/// [`vigil_test_support::bin::path`].
pub(crate) fn bin(name: &str) -> PathBuf {
    vigil_test_support::bin::path(env!("CARGO_BIN_EXE_vigilctl"), name)
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

/// A port that was free a moment ago: bound on port 0, then let go.
/// Racy, as another process may take it before the child binds it; only
/// for a test that must name a port before the child starts. Elsewhere
/// servers bind port 0 and say in their log what they bound.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `vigilctl init` into `dir` for a server on port 0 (both listeners):
/// [`start_server`] points `client.toml` at what the server bound. Its
/// report (stdout).
pub(crate) fn init(dir: &Path) -> String {
    let out = run(Command::new(bin("vigilctl")).arg("init").arg(dir).args([
        "--port",
        "0",
        "--http-port",
        "0",
    ]));
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8")
}

/// The REST API token of an init directory's server.
pub(crate) fn api_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server-data/api-token"))
        .expect("token")
        .trim()
        .to_owned()
}

/// A `vigil-server` process and the addresses it bound; killed on drop.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) proc: Proc,
    /// The mutual-TLS listener.
    pub(crate) addr: SocketAddr,
    /// The REST API.
    pub(crate) api: SocketAddr,
}

impl Server {
    /// Starts `cmd` (a `vigil-server` command) and waits until its log
    /// says where both listeners are bound.
    pub(crate) fn start(cmd: &mut Command, label: &'static str) -> Server {
        let proc = Proc::spawn(cmd, label);
        let addr = bound_blocking(&proc, Listener::Tls, START);
        let api = bound_blocking(&proc, Listener::Rest, START);
        Server { proc, addr, api }
    }

    /// `http://ADDR` of the REST API.
    pub(crate) fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// SIGTERM, then its exit status.
    pub(crate) fn terminate(self) -> ExitStatus {
        self.proc.terminate(Duration::from_secs(15))
    }
}

/// Starts the server of an init directory, with extra flags, and points
/// the directory's `client.toml` at it.
pub(crate) fn start_server(dir: &Path, extra: &[&str]) -> Server {
    let server = Server::start(
        Command::new(bin("vigil-server"))
            .arg("--config")
            .arg(dir.join("server.toml"))
            .args(extra),
        "server",
    );
    point_client_config(&dir.join("client.toml"), server.addr);
    server
}

/// Starts the client of an init directory and waits until it is connected
/// (the server answered it, so the server lists it).
pub(crate) fn start_client(dir: &Path, extra: &[&str]) -> Proc {
    let client = Proc::spawn(
        Command::new(bin("vigil-client"))
            .arg("--config")
            .arg(dir.join("client.toml"))
            .args(extra),
        "client",
    );
    client.wait_for("server modules synced", 1, START);
    client
}

pub(crate) fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

pub(crate) fn wait_lines(path: &Path, n: usize, within: Duration) {
    vigil_test_support::wait::until(
        &format!("{} has {n} lines, within {within:?}", path.display()),
        within,
        || lines_in(path) >= n,
    );
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

// Not every test binary that shares this module uses them.
#[allow(unused_imports)]
pub(crate) use vigil_test_support::debian::{found_on_path, program as debian_program};

/// The example module hello.so, built once for every test of this package.
pub(crate) fn hello_so() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    vigil_modules::dev::cargo_build_module(
        &root.join("mods/hello/Cargo.toml"),
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-hello"),
        &[],
        false,
    )
    .expect("hello builds")
}
