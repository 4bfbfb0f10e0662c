//! Everything the bench prepares before it measures: identities, the
//! server's files, the module, the file-descriptor limit, and the server
//! process itself.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_rustls::rustls::ClientConfig;
use vigil_auth::{Fingerprint, GeneratedIdentity, TrustFile, client_config};

use crate::http::Api;

/// The client side of one simulated identity.
#[derive(Debug, Clone)]
pub(crate) struct ClientIdentity {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) config: Arc<ClientConfig>,
}

/// Generates the server identity and `n` client identities, each with its
/// rustls configuration, spread over every core.
pub(crate) fn identities(n: usize) -> anyhow::Result<(GeneratedIdentity, Vec<ClientIdentity>)> {
    let server = GeneratedIdentity::generate("vigil-server")?;
    let server_fp = server.fingerprint;
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, 16);
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<anyhow::Result<Vec<ClientIdentity>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(n);
                s.spawn(move || {
                    (start..end)
                        .map(|i| {
                            let g = GeneratedIdentity::generate(&format!("bench-client-{i}"))?;
                            let config = client_config(&g.identity()?, server_fp)?;
                            Ok(ClientIdentity {
                                fingerprint: g.fingerprint,
                                config,
                            })
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("identity thread panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for part in parts {
        out.extend(part?);
    }
    Ok((server, out))
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Raises this process's open-file limit to its hard limit (children
/// inherit it, so the server gets it too) and returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum != limit.current {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("warning: cannot raise the open-file limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Builds `mods/hello` in release and deploys it into `mods` as hello.so,
/// or copies a given module file.
pub(crate) fn deploy_hello(mods: &Path, prebuilt: Option<&Path>) -> anyhow::Result<()> {
    let built = match prebuilt {
        Some(p) => p.to_owned(),
        None => {
            let root = workspace_root();
            let manifest = root.join("mods/hello/Cargo.toml");
            anyhow::ensure!(
                manifest.exists(),
                "{} not found: run from a vigil checkout or pass --module FILE",
                manifest.display()
            );
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            vigil_modules::dev::cargo_build_module(&manifest, &target, &[], true)
                .context("building mods/hello")?
        }
    };
    vigil_modules::dev::deploy(&built, mods, "hello.so").context("deploying hello.so")?;
    Ok(())
}

/// The checkout this binary was built from.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// The files and ports of the server under test.
#[derive(Debug)]
pub(crate) struct ServerSetup {
    pub(crate) dir: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) port: u16,
    pub(crate) http_port: u16,
    /// The WebSocket port, when the fleet connects over `wss://`.
    pub(crate) wss_port: Option<u16>,
    pub(crate) token: String,
    pub(crate) max_connections: usize,
    pub(crate) log_filter: String,
}

impl ServerSetup {
    /// Writes identity, authority key, trust file and mods directory into
    /// `dir`.
    pub(crate) fn write(
        dir: &Path,
        bin: PathBuf,
        server: &GeneratedIdentity,
        clients: &[ClientIdentity],
        max_connections: usize,
        log_filter: String,
    ) -> anyhow::Result<ServerSetup> {
        server.write(&dir.join("server.crt"), &dir.join("server.key"), true)?;
        let authority = vigil_command::generate_signing_key()?;
        let text = format!("{}\n", vigil_command::encode_signing_key(&authority));
        vigil_auth::write_file(&dir.join("authority.key"), text.as_bytes(), 0o600, true)?;
        let trust = TrustFile {
            trusted_fingerprints: clients.iter().map(|c| c.fingerprint).collect(),
        };
        std::fs::write(dir.join("trusted-keys.json"), trust.to_json())?;
        std::fs::create_dir_all(dir.join("mods"))?;
        let mut token_bytes = [0u8; 16];
        rand::fill(&mut token_bytes);
        let token = hex::encode(token_bytes);
        Ok(ServerSetup {
            dir: dir.to_owned(),
            bin,
            port: free_port()?,
            http_port: free_port()?,
            wss_port: None,
            token,
            max_connections,
            log_filter,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    /// Where the fleet connects: the WebSocket port if it is used.
    pub(crate) fn fleet_addr(&self) -> SocketAddr {
        match self.wss_port {
            Some(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            None => self.addr(),
        }
    }

    pub(crate) fn api(&self) -> Api {
        Api::new(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.http_port),
            self.token.clone(),
        )
    }

    pub(crate) fn mods(&self) -> PathBuf {
        self.dir.join("mods")
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Starts `vigil-server` and waits until its REST API answers.
    pub(crate) async fn start(&self) -> anyhow::Result<ServerProcess> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let d = &self.dir;
        let mut command = Command::new(&self.bin);
        if let Some(port) = self.wss_port {
            command.arg("--wss-port").arg(port.to_string());
        }
        let child = command
            .arg("--cert")
            .arg(d.join("server.crt"))
            .arg("--key")
            .arg(d.join("server.key"))
            .arg("--trusted-keys")
            .arg(d.join("trusted-keys.json"))
            .arg("--mods")
            .arg(d.join("mods"))
            .arg("--authority-key")
            .arg(d.join("authority.key"))
            .arg("--data-dir")
            .arg(d.join("server-data"))
            .args(["--interface", "127.0.0.1", "--http-interface", "127.0.0.1"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--http-port")
            .arg(self.http_port.to_string())
            .arg("--max-connections")
            .arg(self.max_connections.to_string())
            .env("VIGIL_API_TOKEN", &self.token)
            .env("VIGIL_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let mut proc = ServerProcess {
            child,
            started: Instant::now(),
            ready_after: Duration::ZERO,
        };
        let api = self.api();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = proc.child.try_wait()? {
                anyhow::bail!(
                    "vigil-server exited at start ({status}); its log:\n{}",
                    tail(&self.log_path())
                );
            }
            if let Ok((200, _)) = api.request("GET", "/health", None).await {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "vigil-server did not answer /health within 60 s; its log:\n{}",
                tail(&self.log_path())
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proc.ready_after = proc.started.elapsed();
        Ok(proc)
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A running `vigil-server`; killed when dropped.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) started: Instant,
    pub(crate) ready_after: Duration,
}

impl ServerProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `grace`).
    /// Returns how long the shutdown took.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("cannot signal vigil-server")?;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > grace {
                eprintln!("warning: vigil-server ignored SIGTERM for {grace:?}; killing it");
                self.child.kill()?;
                self.child.wait()?;
                return Ok(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
