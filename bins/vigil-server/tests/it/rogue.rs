//! A server the client pins (it holds the server's key, as an attacker who
//! took the server would) but that sends what it likes: forged, altered,
//! stale, replayed and misdirected commands, bad heartbeats. The real
//! `vigil-client` must refuse each with its code and run nothing.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use vigil_auth::{Identity, TrustStore};
use vigil_proto::{Ack, ClientRequest, Frame};
use vigil_test_support::wait::WAIT;

use crate::support::Deployment;

pub(crate) struct Rogue {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl Rogue {
    pub(crate) async fn bind(dep: &Deployment) -> Rogue {
        let identity =
            Identity::load(&dep.path("server.crt"), &dep.path("server.key")).expect("identity");
        let trust = TrustStore::from_fingerprints([dep.client_identity().fingerprint()]);
        let config = vigil_auth::server_config(&identity, trust).expect("config");
        Rogue {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            acceptor: TlsAcceptor::from(config),
        }
    }

    pub(crate) fn addr(&self) -> String {
        self.listener.local_addr().expect("addr").to_string()
    }

    /// The next client that connects.
    pub(crate) async fn accept(&self) -> Peer {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the client connected in time")
            .expect("accept");
        let stream = self.acceptor.accept(tcp).await.expect("handshake");
        Peer {
            stream,
            buf: Vec::new(),
            nonce: None,
        }
    }
}

pub(crate) struct Peer {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
    /// The latest nonce the client sent (`hb:nonce`), base64.
    pub(crate) nonce: Option<String>,
}

/// A `vigil-heartbeat-v2` beat line signed by `key` covering `nonce`
/// (base64) among a few other nonces.
pub(crate) fn nonce_beat(
    key: &vigil_command::SigningKey,
    epoch: u64,
    seq: u64,
    nonce: &str,
) -> String {
    let nonce = vigil_command::decode_nonce(nonce).expect("the client's nonce");
    let sent_at =
        vigil_command::Timestamp::from_system_time(std::time::SystemTime::now()).expect("clock");
    let batch =
        vigil_command::SignedBatch::sign(key, epoch, seq, sent_at, vec![[1; 32], [2; 32], nonce])
            .expect("batch");
    let beat = batch.for_leaf(2).expect("leaf");
    format!(
        "hb:beat:hb{seq} {}\n",
        serde_json::to_string(&beat).expect("json")
    )
}

impl Peer {
    /// Reads the client's frames, answering its requests as a server
    /// would, until `want` takes one; `None` if the client hung up.
    async fn until<T>(&mut self, mut want: impl FnMut(&Frame) -> Option<T>) -> Option<T> {
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let Ok(frame) = Frame::parse(&line[..end]) else {
                    continue;
                };
                if let Ok(ClientRequest::Nonce(n)) = ClientRequest::from_frame(&frame) {
                    self.nonce = Some(n.nonce);
                }
                let reply = match (frame.api(), frame.kind()) {
                    ("sys", "ping") => Some(("sys:pong", "{}")),
                    ("sys", "hello") => Some(("sys:hello_ok", "{}")),
                    ("mod", "sync") => Some(("mod:sync_resp", "{\"modules\":[]}")),
                    _ => None,
                };
                if let Some((header, body)) = reply {
                    let line = format!("{header}:{} {body}\n", frame.reference());
                    self.stream.write_all(line.as_bytes()).await.ok()?;
                }
                if let Some(t) = want(&frame) {
                    return Some(t);
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("the client sent nothing in time"),
            }
        }
    }

    /// Serves the client until it has synced (it is then up).
    pub(crate) async fn admitted(&mut self) {
        self.until(|f| (f.api() == "mod" && f.kind() == "sync").then_some(()))
            .await
            .expect("the client synced");
    }

    pub(crate) async fn send(&mut self, line: &[u8]) {
        self.stream.write_all(line).await.expect("write");
    }

    /// Sends `cmd:exec:<reference> <json>` and returns the client's ack.
    pub(crate) async fn command(&mut self, reference: &str, json: &str) -> Ack {
        self.send(format!("cmd:exec:{reference} {json}\n").as_bytes())
            .await;
        self.until(|f| match ClientRequest::from_frame(f) {
            Ok(ClientRequest::Ack(ack)) if f.reference() == reference => Some(ack),
            _ => None,
        })
        .await
        .expect("the client answered the command")
    }

    /// Serves the client until it reports a failsafe transition; its
    /// event (`fired`, `rearmed`).
    pub(crate) async fn failsafe_report(&mut self) -> Option<String> {
        self.until(|f| match ClientRequest::from_frame(f) {
            Ok(ClientRequest::FailsafeReport(r)) => Some(r.event),
            _ => None,
        })
        .await
    }
}

/// What [`Peer::flood`] saw.
pub(crate) struct Flood {
    /// The client's acknowledgements, by REF.
    pub(crate) acks: std::collections::HashMap<String, Ack>,
    /// Failsafe transitions the client reported.
    pub(crate) reports: Vec<String>,
}

impl Peer {
    /// Sends `frames` (each a `cmd:exec` line whose REF is its index, as
    /// `{prefix}{i}`), as fast as the client takes them or, with `window`,
    /// with at most that many unacknowledged; `heartbeat(n, latest nonce)` is sent every
    /// 500 ms meanwhile. Reads the client's answers at the same time, until
    /// every frame is acknowledged or nothing arrives for 10 s.
    pub(crate) async fn flood(
        &mut self,
        frames: &[String],
        window: Option<usize>,
        mut heartbeat: impl FnMut(u64, Option<&str>) -> String,
    ) -> Flood {
        use std::cell::{Cell, RefCell};
        use std::time::{Duration, Instant};
        let acked = Cell::new(0usize);
        let done = Cell::new(false);
        let wake = tokio::sync::Notify::new();
        let pongs: RefCell<Vec<u8>> = RefCell::new(Vec::new());
        let acks = RefCell::new(std::collections::HashMap::new());
        let reports = RefCell::new(Vec::new());
        let (mut rd, mut wr) = tokio::io::split(&mut self.stream);
        let leftover = std::mem::take(&mut self.buf);
        let latest = RefCell::new(self.nonce.clone());
        let writer = async {
            let mut beats = 0u64;
            let mut last_beat = Instant::now();
            let mut next = 0usize;
            let mut out = Vec::new();
            while !done.get() {
                if last_beat.elapsed() >= Duration::from_millis(500) {
                    beats += 1;
                    let nonce = latest.borrow().clone();
                    out.extend_from_slice(heartbeat(beats, nonce.as_deref()).as_bytes());
                    last_beat = Instant::now();
                }
                out.append(&mut pongs.borrow_mut());
                let room = match window {
                    Some(w) => w.saturating_sub(next - acked.get()),
                    None => usize::MAX,
                };
                let mut taken = 0;
                while next < frames.len() && taken < room && out.len() < 64 * 1024 {
                    out.extend_from_slice(frames[next].as_bytes());
                    next += 1;
                    taken += 1;
                }
                if !out.is_empty() {
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                if taken == 0 {
                    // Wait for acks (or the next heartbeat).
                    let woken = wake.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(100), woken).await;
                }
            }
        };
        let reader = async {
            let mut buf = leftover;
            let mut last_progress = Instant::now();
            loop {
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let Ok(frame) = Frame::parse(&line[..end]) else {
                        continue;
                    };
                    match ClientRequest::from_frame(&frame) {
                        Ok(ClientRequest::Ack(ack)) => {
                            acks.borrow_mut().insert(frame.reference().to_owned(), ack);
                            acked.set(acked.get() + 1);
                            last_progress = Instant::now();
                            wake.notify_one();
                        }
                        Ok(ClientRequest::FailsafeReport(r)) => {
                            reports.borrow_mut().push(r.event);
                            pongs.borrow_mut().extend_from_slice(
                                format!("fs:report_ok:{} {{}}\n", frame.reference()).as_bytes(),
                            );
                        }
                        Ok(ClientRequest::Nonce(n)) => *latest.borrow_mut() = Some(n.nonce),
                        Ok(ClientRequest::Ping) => pongs.borrow_mut().extend_from_slice(
                            format!("sys:pong:{} {{}}\n", frame.reference()).as_bytes(),
                        ),
                        _ => {}
                    }
                }
                if acks.borrow().len() >= frames.len() {
                    break;
                }
                let mut chunk = [0u8; 64 * 1024];
                match tokio::time::timeout(Duration::from_millis(500), rd.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => {
                        if last_progress.elapsed() > Duration::from_secs(10) {
                            break;
                        }
                    }
                }
            }
            done.set(true);
        };
        tokio::join!(writer, reader);
        self.nonce = latest.into_inner();
        Flood {
            acks: acks.into_inner(),
            reports: reports.into_inner(),
        }
    }
}

/// A module the rogue serves: its name, its bytes and the manifest it
/// sends with them (any JSON object, or none).
pub(crate) struct Served {
    pub(crate) name: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) manifest: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Peer {
    /// Serves `modules` as a server would (`mod:sync`, `mod:verify`, and
    /// `mod:exec`, answered as if the module ran) until the client hangs
    /// up; the names of the modules the client asked to run.
    pub(crate) async fn serve_modules(&mut self, modules: &[Served]) -> Vec<String> {
        use sha2::Digest as _;
        use vigil_proto::{ModuleInfo, ServerMessage};
        let sum = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
        let mut ran = Vec::new();
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let Ok(frame) = Frame::parse(&line[..end]) else {
                    continue;
                };
                let reply = match ClientRequest::from_frame(&frame) {
                    Ok(ClientRequest::Ping) => ServerMessage::Pong,
                    Ok(ClientRequest::Hello(_)) => ServerMessage::HelloOk,
                    Ok(ClientRequest::Sync) => ServerMessage::SyncResp {
                        modules: modules
                            .iter()
                            .map(|m| ModuleInfo {
                                name: m.name.clone(),
                                sum: sum(&m.bytes),
                                size: m.bytes.len() as u64,
                                desc: String::new(),
                                manifest: m.manifest.clone(),
                                state: None,
                            })
                            .collect(),
                    },
                    Ok(ClientRequest::Verify { module }) => {
                        let Some(m) = modules.iter().find(|m| m.name == module) else {
                            continue;
                        };
                        ServerMessage::VerifyResp {
                            module,
                            content: m.bytes.clone(),
                            sum: sum(&m.bytes),
                            desc: String::new(),
                            manifest: m.manifest.clone(),
                        }
                    }
                    Ok(ClientRequest::Exec { module, sum, .. }) => {
                        ran.push(module.clone());
                        ServerMessage::ExecResp {
                            module,
                            sum,
                            result: "ran".into(),
                        }
                    }
                    _ => continue,
                };
                let bytes = reply.to_frame(frame.reference()).to_bytes();
                // Flushed: TLS may keep the tail of a large frame buffered
                // until the next write otherwise.
                if self.stream.write_all(&bytes).await.is_err()
                    || self.stream.flush().await.is_err()
                {
                    return ran;
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return ran,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
