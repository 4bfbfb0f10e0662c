//! The REST API from the operator's side: where the server is, which bearer
//! token to present, and one blocking request at a time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Where `vigil-server` listens for REST requests unless told otherwise.
pub(crate) const DEFAULT_API: &str = "http://127.0.0.1:8080";
/// The server's default data directory (its `--data-dir`).
pub(crate) const DEFAULT_DATA_DIR: &str = "vigil-data";
/// The token file's name inside the data directory.
pub(crate) const TOKEN_FILE: &str = "api-token";

/// Options shared by every subcommand that talks to the REST API.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiArgs {
    /// Base URL of the server's REST API (plain HTTP).
    #[arg(long, env = "VIGIL_API", default_value = DEFAULT_API, value_name = "URL")]
    pub(crate) api: String,
    #[command(flatten)]
    pub(crate) token: TokenArgs,
}

/// Where the bearer token comes from.
///
/// Flags win over the environment: `--token`, then `--token-file`, then
/// `--data-dir`'s `api-token`, then `VIGIL_API_TOKEN`,
/// `VIGIL_API_TOKEN_FILE`, and last the `api-token` in `VIGIL_DATA_DIR` (or
/// `vigil-data`, the server's default).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TokenArgs {
    /// Bearer token (also VIGIL_API_TOKEN). Other local users can read
    /// command lines: prefer --token-file or the environment.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// File holding the bearer token (also VIGIL_API_TOKEN_FILE).
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// The server's data directory: its api-token file is used when no
    /// token is given otherwise (also VIGIL_DATA_DIR) [default: vigil-data;
    /// for `vigilctl init DIR` it is DIR/server-data].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API token file {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the API token file {} is empty",
        path.display()
    );
    Ok(token.to_owned())
}

impl TokenArgs {
    /// The token, from the first source that is set (see the type's docs).
    pub(crate) fn resolve(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            let t = t.trim();
            anyhow::ensure!(!t.is_empty(), "--token is empty");
            return Ok(t.to_owned());
        }
        if let Some(path) = &self.token_file {
            return read_token(path);
        }
        if let Some(dir) = &self.data_dir {
            return read_token(&dir.join(TOKEN_FILE)).with_context(|| {
                format!(
                    "no token in --data-dir {}: the server writes {TOKEN_FILE} there on its first start",
                    dir.display()
                )
            });
        }
        if let Some(t) = env_nonempty("VIGIL_API_TOKEN") {
            return Ok(t.trim().to_owned());
        }
        if let Some(path) = env_nonempty("VIGIL_API_TOKEN_FILE") {
            return read_token(Path::new(&path))
                .context("VIGIL_API_TOKEN_FILE names a file that holds no token");
        }
        let (dir, from) = match env_nonempty("VIGIL_DATA_DIR") {
            Some(d) => (PathBuf::from(d), "VIGIL_DATA_DIR"),
            None => (
                PathBuf::from(DEFAULT_DATA_DIR),
                "the default data directory",
            ),
        };
        let path = dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(_) => read_token(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no API token found. Looked for --token, --token-file and --data-dir (not \
                 given), VIGIL_API_TOKEN and VIGIL_API_TOKEN_FILE (not set), and {} ({from}: \
                 no such file). The server writes its token to DATA_DIR/{TOKEN_FILE} on its \
                 first start; for a server started from `vigilctl init DIR`, pass \
                 --data-dir DIR/server-data",
                path.display()
            ),
            Err(e) => Err(e).with_context(|| {
                format!("cannot read the API token file {} ({from})", path.display())
            }),
        }
    }
}

/// A REST client for one server.
#[derive(Debug)]
pub(crate) struct Api {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// A status and a JSON body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Answer {
    /// Whether the status is 2xx.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The server's `detail`, or the body as text.
    pub(crate) fn detail(&self) -> String {
        match self.body.get("detail").and_then(Value::as_str) {
            Some(d) => d.to_owned(),
            None => self.body.to_string(),
        }
    }

    /// The body when the status is 2xx; an error with the status and the
    /// server's `detail` otherwise.
    pub(crate) fn into_success(self) -> anyhow::Result<Value> {
        if self.is_success() {
            Ok(self.body)
        } else {
            bail!(
                "the server answered {}: {}",
                status_text(self.status),
                self.detail()
            )
        }
    }
}

/// `404 Not Found`.
pub(crate) fn status_text(status: u16) -> String {
    match http_reason(status) {
        Some(r) => format!("{status} {r}"),
        None => status.to_string(),
    }
}

fn http_reason(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => return None,
    })
}

/// Percent-encodes one path segment.
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Api {
    /// A client for the API at `base`, presenting `token` if given. Each
    /// request may take at most `timeout` in all.
    pub(crate) fn new(base: &str, token: Option<String>, timeout: Duration) -> anyhow::Result<Api> {
        let base = base.trim().trim_end_matches('/');
        if base.starts_with("https://") {
            bail!(
                "--api {base}: vigilctl speaks plain HTTP only (the REST API listens on \
                 loopback by default); use http://"
            );
        }
        anyhow::ensure!(
            base.starts_with("http://") && base.len() > "http://".len(),
            "--api {base:?} is not an http:// URL (e.g. {DEFAULT_API})"
        );
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .user_agent(concat!("vigilctl/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Api {
            agent: config.into(),
            base: base.to_owned(),
            token,
        })
    }

    /// A client for `args`, with its token resolved.
    pub(crate) fn with_token(args: &ApiArgs, timeout: Duration) -> anyhow::Result<Api> {
        let token = args.token.resolve()?;
        Api::new(&args.api, Some(token), timeout)
    }

    /// The full URL of `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`.
    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Answer> {
        let url = self.url(path);
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.finish(&url, req.call())
    }

    /// `POST path` with a JSON body.
    pub(crate) fn post(&self, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
        let url = self.url(path);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.finish(&url, req.send(body))
    }

    fn finish(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Answer> {
        let resp = result.map_err(|e| match e {
            ureq::Error::Timeout(_) => {
                anyhow::anyhow!("{url}: no answer in time ({e})")
            }
            other => anyhow::anyhow!(
                "cannot reach the REST API at {url}: {other} (is vigil-server running, and \
                 is --api / VIGIL_API its http_interface and http_port?)"
            ),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .read_to_string()
            .with_context(|| format!("{url}: cannot read the answer"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }
}

/// Prints JSON for a person (indented).
pub(crate) fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}
