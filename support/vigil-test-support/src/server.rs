//! Where a `vigil-server` listens. Tests start it on port 0 (`--port 0
//! --http-port 0`, or a config with `port = 0`), so the kernel picks free
//! ports while it binds them and no other process can take them in
//! between; the server logs what it bound at info level:
//!
//! ```text
//! INFO vigil_server::server::accept: vigil server listening listen=127.0.0.1:44851 ...
//! INFO vigil_server::http: REST API listening listen=Some(127.0.0.1:44707)
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::process::Proc;

/// One of a server's listeners, as its log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The mutual-TLS port: `vigil server listening`.
    Tls,
    /// The REST API: `REST API listening`.
    Rest,
    /// The WebSocket transport: `vigil WebSocket listening`.
    WebSocket,
}

impl Listener {
    /// The text of the log line that says the listener is bound.
    pub fn log_line(self) -> &'static str {
        match self {
            Listener::Tls => "vigil server listening",
            Listener::Rest => "REST API listening",
            Listener::WebSocket => "vigil WebSocket listening",
        }
    }
}

/// The address in the `listen=` field of a log line: `listen=ADDR`, or
/// `listen=Some(ADDR)` for a listener that is optional; or the `listen`
/// field of a JSON log line.
pub fn listen_addr(line: &str) -> Option<SocketAddr> {
    // A JSON line (`--log-format json`): the same field, in `fields`.
    let json = line.find('{').and_then(|at| {
        let v: serde_json::Value = serde_json::from_str(&line[at..]).ok()?;
        v["fields"]["listen"].as_str().map(str::to_owned)
    });
    let value = match &json {
        Some(v) => v.as_str(),
        None => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))?,
    };
    let value = value
        .strip_prefix("Some(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or(value);
    value.trim_matches('"').parse().ok()
}

fn parse(line: &str, listener: Listener) -> SocketAddr {
    listen_addr(line).unwrap_or_else(|| panic!("no listen= address in {listener:?} line {line:?}"))
}

/// Waits (on the tokio timer) until `server` logged that `listener` is
/// bound; its address.
pub async fn bound(server: &Proc, listener: Listener) -> SocketAddr {
    parse(&server.wait_logged(listener.log_line()).await, listener)
}

/// As [`bound`], blocking, at most `within`.
pub fn bound_blocking(server: &Proc, listener: Listener, within: Duration) -> SocketAddr {
    parse(&server.wait_line(listener.log_line(), within), listener)
}

/// Points the client config at `path` (as `vigilctl init` writes it) at
/// `server` (an address, or a `wss://` URL): its `server = "..."` line
/// says that.
pub fn point_client_config(path: &Path, server: impl std::fmt::Display) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut found = false;
    let mut out: String = text
        .lines()
        .map(|l| {
            if l.starts_with("server = ") {
                found = true;
                format!("server = \"{server}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    assert!(found, "{}: no `server = ` line", path.display());
    // In place: the file keeps its mode.
    std::fs::write(path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_read_from_both_forms() {
        let tls = "2026-12-02T03:31:35Z  INFO vigil_server::server::accept: vigil server \
                   listening listen=127.0.0.1:44851 fingerprint=eb5c trusted=1";
        let rest = "2026-12-02T03:31:35Z  INFO vigil_server::http: REST API listening \
                    listen=Some(127.0.0.1:44707)";
        assert_eq!(listen_addr(tls), Some(([127, 0, 0, 1], 44851).into()));
        assert_eq!(listen_addr(rest), Some(([127, 0, 0, 1], 44707).into()));
        assert_eq!(listen_addr("listen=None"), None);
        assert_eq!(listen_addr("no address here"), None);
    }

    #[test]
    fn a_client_config_is_pointed_at_the_bound_address() {
        let dir = std::env::temp_dir().join(format!("vigil-test-support-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("client.toml");
        std::fs::write(
            &path,
            "# comment\nserver = \"127.0.0.1:0\"\ncert = \"client.crt\"\n",
        )
        .expect("write");
        point_client_config(&path, SocketAddr::from(([127, 0, 0, 1], 4321)));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "# comment\nserver = \"127.0.0.1:4321\"\ncert = \"client.crt\"\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
