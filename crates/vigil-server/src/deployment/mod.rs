//! The composition root: a [`Deployment`] owns everything one running
//! vigil server is made of (the mTLS server, the REST API, the trust and
//! module watchers, the audit log) and their shutdown, built from one
//! validated [`Settings`] or from a [`ServerConfig`] assembled by hand.
//!
//! The `vigil-server` binary, `vigilctl demo`, the tests and the
//! benchmarks all start servers through it.

mod build;
mod settings;

use std::net::SocketAddr;
use std::path::Path;

use vigil_auth::{Fingerprint, TrustWatcher};
use vigil_modules::ModuleWatcher;

use crate::{HttpConfig, HttpServer, Server, ServerConfig, ServerError, ServerHandle};

pub use settings::{Settings, TreePath};

/// Why a deployment could not be built or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeploymentError {
    /// A setting is out of range or contradicts another.
    #[error("{0}")]
    Invalid(String),
    /// A file or directory the deployment needs could not be used.
    #[error("{context}")]
    File {
        /// What was being done, naming the path.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A listener could not be bound, or TLS could not be set up.
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl DeploymentError {
    pub(crate) fn file(
        path: &Path,
        what: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> DeploymentError {
        DeploymentError::File {
            context: format!("{what} {}", path.display()),
            source: source.into(),
        }
    }

    pub(crate) fn context(
        what: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> DeploymentError {
        DeploymentError::File {
            context: what.to_owned(),
            source: source.into(),
        }
    }
}

/// One vigil server and what it is made of, not yet listening.
///
/// ```no_run
/// # async fn demo() -> Result<(), vigil_server::DeploymentError> {
/// use vigil_server::{Deployment, Settings};
///
/// let mut settings = Settings::default();
/// settings.data_dir = Some("vigil-data".into());
/// let running = Deployment::build(settings)?.start().await?;
/// let handle = running.handle();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     handle.shutdown();
/// });
/// running.run().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a deployment does nothing until it is started"]
pub struct Deployment {
    server: ServerConfig,
    api: Option<HttpConfig>,
    /// Set by [`Deployment::build`]; [`Deployment::new`] starts its own.
    trust_watch: Option<TrustWatcher>,
    module_watch: Option<ModuleWatcher>,
}

impl Deployment {
    /// Reads and checks every setting, loads the identity, the trust file,
    /// the modules, the authority key and the authorities, opens the audit
    /// log and the relay's replay guard, and starts watching the trust file
    /// and the module directory. Nothing listens yet.
    pub fn build(settings: Settings) -> Result<Deployment, DeploymentError> {
        build::build(settings)
    }

    /// A deployment of a server configured by hand, without the REST API
    /// (see [`Deployment::with_api`]). [`Deployment::start`] watches the
    /// trust file (unless the store is in memory) and the module directory
    /// of `server`.
    pub fn new(server: ServerConfig) -> Deployment {
        Deployment {
            server,
            api: None,
            trust_watch: None,
            module_watch: None,
        }
    }

    /// Serves the REST API too.
    pub fn with_api(mut self, api: HttpConfig) -> Deployment {
        self.api = Some(api);
        self
    }

    /// The server's settings.
    pub fn server_config(&self) -> &ServerConfig {
        &self.server
    }

    /// The REST API's settings, if it is served.
    pub fn api_config(&self) -> Option<&HttpConfig> {
        self.api.as_ref()
    }

    /// Binds the mTLS listener and the REST API's and starts the watchers
    /// that [`Deployment::build`] has not started.
    pub async fn start(self) -> Result<Running, DeploymentError> {
        let Deployment {
            server,
            api,
            trust_watch,
            module_watch,
        } = self;
        // An in-memory trust store has no file to follow.
        let trust_watch = match (trust_watch, server.trust.path()) {
            (Some(w), _) => Some(w),
            (None, Some(_)) => Some(
                server
                    .trust
                    .watch()
                    .map_err(|e| DeploymentError::context("cannot watch the trust file", e))?,
            ),
            (None, None) => None,
        };
        let module_watch =
            match (module_watch, &server.modules) {
                (Some(w), _) => Some(w),
                (None, Some(registry)) => Some(registry.watch().map_err(|e| {
                    DeploymentError::context("cannot watch the module directory", e)
                })?),
                (None, None) => None,
            };
        let server = Server::bind(server).await?;
        let handle = server.handle();
        let api = match api {
            Some(config) => Some(HttpServer::bind(config, handle.clone()).await?),
            None => None,
        };
        Ok(Running {
            server,
            api,
            handle,
            _trust_watch: trust_watch,
            _module_watch: module_watch,
        })
    }
}

/// A started [`Deployment`]: listening, not yet serving until
/// [`Running::run`].
#[derive(Debug)]
#[must_use = "a started deployment serves only when it runs"]
pub struct Running {
    server: Server,
    api: Option<HttpServer>,
    handle: ServerHandle,
    _trust_watch: Option<TrustWatcher>,
    _module_watch: Option<ModuleWatcher>,
}

impl Running {
    /// The address mTLS clients connect to (the port the OS chose, for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The WebSocket transport's address, if it is served.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.server.wss_addr()
    }

    /// The REST API's address, if it is served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(HttpServer::local_addr)
    }

    /// The server's key fingerprint, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.server.fingerprint()
    }

    /// A handle to stop the deployment and look at it while it runs.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves until [`ServerHandle::shutdown`] (or an authorized emergency
    /// shutdown), drains the sessions, then closes the audit log. The
    /// watchers stop when this returns.
    pub async fn run(self) -> Result<(), ServerError> {
        let Running {
            server,
            api,
            handle,
            _trust_watch,
            _module_watch,
        } = self;
        let api = async {
            if let Some(api) = api {
                api.run().await;
            }
        };
        let (served, ()) = tokio::join!(server.run(), api);
        handle.close_audit().await?;
        served
    }
}
