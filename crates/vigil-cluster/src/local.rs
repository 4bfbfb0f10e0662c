//! A NATS cluster on loopback: node identities, the `nats-server`
//! configuration that pins them and the vigil servers, and the processes.
//! The cluster tests, `vigilctl demo --cluster` and the cluster benchmark
//! start theirs with it; it is also a worked example of the configuration
//! a deployment needs (see docs/security.md).
//!
//! Every node listens on 127.0.0.1 for clients and for routes, with TLS on
//! both: a node presents an Ed25519 certificate whose names include
//! `127.0.0.1` (routes check the address they dial), accepts only the
//! vigil servers' certificates on its client port (`verify` against their
//! self-signed certificates, and `pinned_certs` with their key
//! fingerprints), and only the other nodes' on its route port.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_auth::{Fingerprint, GeneratedIdentity};

/// Why a local NATS cluster could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A node identity could not be made.
    #[error(transparent)]
    Identity(#[from] vigil_auth::AuthError),
    /// `nats-server` could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A node did not listen in time.
    #[error(
        "nats node {name} did not listen on 127.0.0.1:{port} within {within:?} (its log: {log})"
    )]
    NotListening {
        /// The node.
        name: String,
        /// Its client port.
        port: u16,
        /// How long it was given.
        within: Duration,
        /// Its log file.
        log: PathBuf,
    },
    /// No free port could be found.
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
    /// The cluster was asked for no node.
    #[error("a NATS cluster needs at least one node")]
    NoNodes,
}

/// One node of a [`LocalNats`].
#[derive(Debug)]
pub struct Node {
    /// Its `server_name` (`n1`, `n2`, ...).
    pub name: String,
    /// Its client port.
    pub port: u16,
    /// Its route port.
    pub route_port: u16,
    /// The fingerprint of its key: what a vigil server pins.
    pub fingerprint: Fingerprint,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Whether its process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// A NATS cluster of `nats-server` processes on loopback, killed on drop.
#[derive(Debug)]
pub struct LocalNats {
    program: PathBuf,
    nodes: Vec<Node>,
}

/// A free TCP port on 127.0.0.1 (bound, then released: the node binds it
/// a moment later).
fn free_port() -> Result<u16, LocalError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(LocalError::Port)?;
    Ok(listener.local_addr().map_err(LocalError::Port)?.port())
}

fn write(path: &Path, text: &str) -> Result<(), LocalError> {
    std::fs::write(path, text).map_err(|source| LocalError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A string as a NATS configuration string (its syntax is JSON's).
fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn pins(list: &[Fingerprint]) -> String {
    list.iter()
        .map(|fp| quoted(&fp.to_hex()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl LocalNats {
    /// Writes the configuration of a cluster of `nodes` nodes into `dir`
    /// (which must exist) and starts them with `program` (`nats-server`),
    /// admitting on their client ports the holders of `clients`
    /// (certificates in PEM, one per vigil server). Returns once every
    /// node listens; JetStream elects its leader a moment later, and the
    /// vigil servers retry until it has.
    pub fn start(
        program: &Path,
        dir: &Path,
        nodes: usize,
        clients: &[String],
    ) -> Result<LocalNats, LocalError> {
        if nodes == 0 {
            return Err(LocalError::NoNodes);
        }
        let mut client_pins = Vec::new();
        for pem in clients {
            for cert in vigil_auth::certs_from_pem(pem.as_bytes(), Path::new("client"))? {
                client_pins.push(Fingerprint::of_cert_der(&cert)?);
            }
        }
        let clients_ca = dir.join("vigil-servers.pem");
        write(&clients_ca, &clients.concat())?;
        let mut made = Vec::new();
        for i in 1..=nodes {
            let name = format!("n{i}");
            let id = GeneratedIdentity::generate_with_names(&name, &["127.0.0.1"])?;
            write(&dir.join(format!("{name}.crt")), &id.cert_pem)?;
            vigil_auth::write_file(
                &dir.join(format!("{name}.key")),
                id.key_pem.as_bytes(),
                0o600,
                true,
            )?;
            made.push((name, id, free_port()?, free_port()?));
        }
        let nodes_ca = dir.join("nats-nodes.pem");
        write(
            &nodes_ca,
            &made
                .iter()
                .map(|(_, id, _, _)| id.cert_pem.clone())
                .collect::<String>(),
        )?;
        let node_pins: Vec<Fingerprint> = made.iter().map(|(_, id, _, _)| id.fingerprint).collect();
        let mut out = Vec::new();
        for (name, id, port, route_port) in &made {
            let cert = dir.join(format!("{name}.crt"));
            let key = dir.join(format!("{name}.key"));
            let store = dir.join(format!("{name}-jetstream"));
            let log = dir.join(format!("{name}.log"));
            let routes: Vec<String> = made
                .iter()
                .filter(|(other, ..)| other != name)
                .map(|(_, _, _, rp)| quoted(&format!("nats-route://127.0.0.1:{rp}")))
                .collect();
            let tls = |ca: &Path, pinned: &[Fingerprint]| {
                format!(
                    "tls {{\n    cert_file: {}\n    key_file: {}\n    ca_file: {}\n    verify: true\n    pinned_certs: [{}]\n    timeout: 3\n  }}",
                    quoted(&cert.display().to_string()),
                    quoted(&key.display().to_string()),
                    quoted(&ca.display().to_string()),
                    pins(pinned),
                )
            };
            let mut text = String::new();
            let _ = writeln!(text, "# A node of a vigil cluster's NATS, on loopback.");
            let _ = writeln!(text, "server_name: {}", quoted(name));
            let _ = writeln!(text, "listen: \"127.0.0.1:{port}\"");
            let _ = writeln!(text, "log_file: {}", quoted(&log.display().to_string()));
            let _ = writeln!(text, "{}", tls(&clients_ca, &client_pins));
            let _ = writeln!(
                text,
                "jetstream {{\n  store_dir: {}\n  max_memory_store: 256MB\n  max_file_store: 1GB\n}}",
                quoted(&store.display().to_string())
            );
            let _ = writeln!(
                text,
                "cluster {{\n  name: \"vigil\"\n  listen: \"127.0.0.1:{route_port}\"\n  routes: [{}]\n  {}\n}}",
                routes.join(", "),
                tls(&nodes_ca, &node_pins),
            );
            let config = dir.join(format!("{name}.conf"));
            write(&config, &text)?;
            out.push(Node {
                name: name.clone(),
                port: *port,
                route_port: *route_port,
                fingerprint: id.fingerprint,
                config,
                log,
                child: None,
            });
        }
        let mut cluster = LocalNats {
            program: program.to_owned(),
            nodes: out,
        };
        for i in 0..nodes {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Every node's key fingerprint: what vigil servers pin.
    pub fn pins(&self) -> Vec<Fingerprint> {
        self.nodes.iter().map(|n| n.fingerprint).collect()
    }

    /// Starts node `i` (again, after [`LocalNats::stop_node`]) and waits
    /// until it listens.
    pub fn start_node(&mut self, i: usize) -> Result<(), LocalError> {
        let Some(node) = self.nodes.get_mut(i) else {
            return Ok(());
        };
        if node.is_running() {
            return Ok(());
        }
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LocalError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        node.child = Some(child);
        let within = Duration::from_secs(15);
        let deadline = Instant::now() + within;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, node.port)).is_err() {
            if Instant::now() > deadline || !node.is_running() {
                return Err(LocalError::NotListening {
                    name: node.name.clone(),
                    port: node.port,
                    within,
                    log: node.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills node `i` (SIGKILL) and reaps it.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes.get_mut(i).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every node.
    pub fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.stop();
    }
}
