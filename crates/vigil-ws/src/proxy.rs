//! HTTP `CONNECT` proxies: [`Proxy`] (from a flag or `HTTPS_PROXY`) and
//! [`tunnel`], which asks one for a tunnel to the server.
//!
//! The proxy sees only where the tunnel goes: the pinned TLS runs inside
//! it, end to end, so a proxy can refuse or cut the connection but cannot
//! read, change or answer in the server's name.

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The most bytes a proxy's answer to `CONNECT` may take, headers included.
const MAX_ANSWER: usize = 8 * 1024;

/// An HTTP proxy: `http://[user:password@]host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    authority: String,
    /// `user:password`, percent-decoded.
    credentials: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("authority", &self.authority)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::fmt::Display for Proxy {
    /// The address without the credentials, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// What went wrong with a proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy address does not parse.
    #[error("bad proxy address {address:?}: {why}")]
    Address {
        /// The address, credentials removed.
        address: String,
        /// Why.
        why: &'static str,
    },
    /// The proxy asked for credentials, or refused the ones given (407,
    /// or 401 as some proxies answer).
    #[error(
        "the proxy {proxy} wants other credentials ({status} {reason}): give them as http://user:password@host:port"
    )]
    AuthRequired {
        /// The proxy.
        proxy: String,
        /// Its status.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The proxy refused the tunnel.
    #[error("the proxy {proxy} refused the tunnel to {target}: {status} {reason}")]
    Refused {
        /// The proxy.
        proxy: String,
        /// Where the tunnel was to go.
        target: String,
        /// Its status.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The proxy's answer was not HTTP, too long, or cut short.
    #[error("the proxy {proxy} answered CONNECT with something that is not HTTP: {why}")]
    BadAnswer {
        /// The proxy.
        proxy: String,
        /// Why.
        why: String,
    },
    /// Reading or writing failed.
    #[error("talking to the proxy {proxy}: {source}")]
    Io {
        /// The proxy.
        proxy: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Proxy {
    /// `host:port` of the proxy, to connect to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The proxy for a connection to `host`, by the convention of
    /// `HTTPS_PROXY` and `NO_PROXY` (whose values the caller reads): the
    /// proxy, unless the list names the host, one of its parent domains,
    /// or `*`. An empty value is no proxy.
    pub fn for_host(
        https_proxy: Option<&str>,
        no_proxy: Option<&str>,
        host: &str,
    ) -> Result<Option<Proxy>, ProxyError> {
        let Some(address) = https_proxy.filter(|v| !v.trim().is_empty()) else {
            return Ok(None);
        };
        if no_proxy.is_some_and(|list| bypasses(list, host)) {
            return Ok(None);
        }
        address.parse().map(Some)
    }
}

/// Whether a `NO_PROXY` list names `host`.
fn bypasses(no_proxy: &str, host: &str) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    no_proxy.split(',').map(str::trim).any(|entry| {
        let entry = entry.trim_start_matches('.').to_ascii_lowercase();
        // An entry with a port names the host on any port here.
        let entry = match entry.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h.to_owned(),
            _ => entry.trim_matches(['[', ']']).to_owned(),
        };
        entry == "*"
            || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
    })
}

impl std::str::FromStr for Proxy {
    type Err = ProxyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let (rest, credentials) = {
            let rest = match trimmed.split_once("://") {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
                Some(_) => {
                    return Err(ProxyError::Address {
                        address: redact(trimmed),
                        why: "only http:// proxies are supported (the tunnel inside is TLS)",
                    });
                }
                None => trimmed,
            };
            let rest = rest.trim_end_matches('/');
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let decoded = percent_decode(userinfo).ok_or(ProxyError::Address {
                        address: redact(trimmed),
                        why: "the credentials are not valid percent-encoded UTF-8",
                    })?;
                    (host, Some(decoded))
                }
                None => (rest, None),
            }
        };
        let bad = |why| ProxyError::Address {
            address: redact(trimmed),
            why,
        };
        if rest.contains('/') {
            return Err(bad("a proxy address has no path"));
        }
        let authority = match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !port.contains(']') => {
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?;
                rest.to_owned()
            }
            _ if !rest.is_empty() => format!("{rest}:80"),
            _ => return Err(bad("no host")),
        };
        Ok(Proxy {
            authority,
            credentials,
        })
    }
}

/// The address with any credentials taken out, for errors and logs.
fn redact(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((before, host)) => {
            let scheme = before.split_once("://").map(|(s, _)| s).unwrap_or("http");
            format!("{scheme}://<redacted>@{host}")
        }
        None => address.to_owned(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Asks the proxy at the other end of `stream` for a tunnel to `target`
/// (`host:port`), with basic authentication if the proxy has credentials.
/// On success the stream is the tunnel: nothing past the proxy's answer
/// has been read.
pub async fn tunnel<S>(stream: &mut S, proxy: &Proxy, target: &str) -> Result<(), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |source| ProxyError::Io {
        proxy: proxy.to_string(),
        source,
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(credentials);
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;

    // Read a byte at a time up to the blank line: what follows it is the
    // server's, and must not be swallowed here.
    let mut answer = Vec::with_capacity(256);
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_ANSWER {
            return Err(ProxyError::BadAnswer {
                proxy: proxy.to_string(),
                why: format!("no end of headers within {MAX_ANSWER} bytes"),
            });
        }
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.map_err(io)? == 0 {
            return Err(ProxyError::BadAnswer {
                proxy: proxy.to_string(),
                why: format!(
                    "the connection closed after {} bytes, before the answer ended",
                    answer.len()
                ),
            });
        }
        answer.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&answer) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ProxyError::BadAnswer {
                proxy: proxy.to_string(),
                why: "the headers do not end".into(),
            });
        }
        Err(e) => {
            return Err(ProxyError::BadAnswer {
                proxy: proxy.to_string(),
                why: e.to_string(),
            });
        }
    }
    let status = response.code.unwrap_or(0);
    let reason = response.reason.unwrap_or("").to_owned();
    match status {
        200..=299 => Ok(()),
        401 | 407 => Err(ProxyError::AuthRequired {
            proxy: proxy.to_string(),
            status,
            reason,
        }),
        _ => Err(ProxyError::Refused {
            proxy: proxy.to_string(),
            target: target.to_owned(),
            status,
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_addresses_parse_and_hide_their_credentials() {
        let p: Proxy = "http://alice:p%40ss@proxy.example:3128/"
            .parse()
            .expect("ok");
        assert_eq!(p.authority(), "proxy.example:3128");
        assert_eq!(p.credentials.as_deref(), Some("alice:p@ss"));
        assert_eq!(p.to_string(), "http://proxy.example:3128");
        assert!(!format!("{p:?}").contains("p@ss"));
        let p: Proxy = "proxy.example".parse().expect("ok");
        assert_eq!(p.authority(), "proxy.example:80");
        for bad in [
            "https://proxy:3128",
            "socks5://p:1",
            "http://p:x",
            "http://",
            "http://p:1/x",
        ] {
            assert!(bad.parse::<Proxy>().is_err(), "{bad}");
        }
        let e = "https://bob:secret@p:1"
            .parse::<Proxy>()
            .expect_err("refused")
            .to_string();
        assert!(!e.contains("secret") && e.contains("<redacted>"), "{e}");
    }

    #[test]
    fn the_environment_convention_is_followed() {
        let p = Proxy::for_host(Some("http://p:3128"), Some("localhost"), "vigil.example");
        assert_eq!(
            p.expect("ok").map(|p| p.to_string()),
            Some("http://p:3128".into())
        );
        let p = Proxy::for_host(Some("http://p:3128"), Some(".example"), "vigil.example");
        assert!(p.expect("ok").is_none());
        assert!(Proxy::for_host(Some(" "), None, "h").expect("ok").is_none());
        assert!(Proxy::for_host(Some("socks5://p:1"), None, "h").is_err());
    }

    #[test]
    fn no_proxy_names_hosts_and_their_subdomains() {
        assert!(bypasses("localhost, .example.com", "vigil.example.com"));
        assert!(bypasses("example.com:443", "example.com"));
        assert!(bypasses("*", "anything"));
        assert!(bypasses("::1", "[::1]"));
        assert!(!bypasses("example.com", "badexample.com"));
        assert!(!bypasses("", "host"));
    }

    #[tokio::test]
    async fn a_tunnel_reads_nothing_past_the_proxy_answer() {
        let (mut client, mut proxy) = tokio::io::duplex(4096);
        let p: Proxy = "http://u:pw@proxy:3128".parse().expect("ok");
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let n = proxy.read(&mut buf).await.expect("ok");
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            proxy
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\nTLS")
                .await
                .expect("ok");
            request
        });
        tunnel(&mut client, &p, "vigil:443").await.expect("ok");
        let request = server.await.expect("ok");
        assert!(
            request.starts_with("CONNECT vigil:443 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Proxy-Authorization: Basic dTpwdw==\r\n"),
            "{request}"
        );
        let mut rest = [0u8; 3];
        client.read_exact(&mut rest).await.expect("ok");
        assert_eq!(&rest, b"TLS");
    }

    #[tokio::test]
    async fn a_refusal_says_its_status() {
        for (answer, want) in [
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..],
                "407",
            ),
            (&b"HTTP/1.1 403 Forbidden\r\n\r\n"[..], "403 Forbidden"),
            (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "not HTTP"),
        ] {
            let (mut client, mut proxy) = tokio::io::duplex(4096);
            let p: Proxy = "http://proxy:3128".parse().expect("ok");
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                let _ = proxy.read(&mut buf).await;
                let _ = proxy.write_all(answer).await;
            });
            let e = tunnel(&mut client, &p, "vigil:443")
                .await
                .expect_err("refused")
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
