//! A server the client pins (it holds the server's key, as an attacker who
//! took the server would) but that sends what it likes: forged, altered,
//! stale, replayed and misdirected commands, bad heartbeats. The real
//! `vigil-client` must refuse each with its code and run nothing.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use vigil_auth::{Identity, TrustStore};
use vigil_proto::{Ack, ClientRequest, Frame};

use crate::support::{Deployment, WAIT};

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
        }
    }
}

pub(crate) struct Peer {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
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
                let reply = match (frame.api(), frame.kind()) {
                    ("sys", "ping") => Some(("sys:pong", "{}")),
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
