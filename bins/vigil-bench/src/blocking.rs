//! A blocking mTLS client on its own thread, for round-trip latency.
//!
//! One request in flight at a time measures the server's latency plus
//! whatever the client adds. An async client adds its runtime's wake-ups
//! (a parked worker woken by the I/O driver) to every round trip; a thread
//! blocked in `read` is woken by the kernel directly. The round trips are
//! measured with this client so that the figure is mostly the server's.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ClientConnection, StreamOwned};

/// A connected, admitted blocking client.
pub(crate) struct BlockingConn {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    line: String,
}

impl BlockingConn {
    /// Connects, completes the handshake and waits for the server's
    /// answer to a ping (a refused client learns it there).
    pub(crate) fn connect(config: Arc<ClientConfig>, server: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(server).context("connect")?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("vigil-server")?;
        let tls = ClientConnection::new(config, name)?;
        let mut conn = BlockingConn {
            stream: BufReader::new(StreamOwned::new(tls, tcp)),
            line: String::new(),
        };
        conn.round_trip(b"sys:ping:a {}\n", "sys:pong:a")?;
        Ok(conn)
    }

    /// Sends `frame` and reads until the frame whose header is `expect`
    /// (`api:type:ref`); an `err` frame for that REF is an error. Other
    /// frames (heartbeats) are skipped.
    pub(crate) fn round_trip(&mut self, frame: &[u8], expect: &str) -> anyhow::Result<()> {
        let reference = expect.rsplit(':').next().unwrap_or_default();
        self.stream.get_mut().write_all(frame)?;
        self.stream.get_mut().flush()?;
        loop {
            self.line.clear();
            let n = self.stream.read_line(&mut self.line)?;
            anyhow::ensure!(n > 0, "connection closed before {expect}");
            let header = self.line.split(' ').next().unwrap_or_default();
            if header == expect {
                return Ok(());
            }
            if header.starts_with("err:") && header.rsplit(':').next() == Some(reference) {
                anyhow::bail!("server answered {}", self.line.trim_end());
            }
        }
    }
}

/// Round trips of `frame(i)` for `duration`, after `warmup` unmeasured
/// ones; returns each measured round trip and the errors.
pub(crate) fn measure(
    conn: &mut BlockingConn,
    duration: Duration,
    warmup: u64,
    frame: impl Fn(u64) -> (Vec<u8>, String),
) -> (Vec<Duration>, u64) {
    let mut samples = Vec::new();
    let mut errors = 0;
    let deadline = Instant::now() + duration;
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let (bytes, expect) = frame(i);
        let start = Instant::now();
        match conn.round_trip(&bytes, &expect) {
            Ok(()) if i > warmup => samples.push(start.elapsed()),
            Ok(()) => {}
            Err(_) => {
                errors += 1;
                if errors > 100 {
                    break;
                }
            }
        }
    }
    (samples, errors)
}
