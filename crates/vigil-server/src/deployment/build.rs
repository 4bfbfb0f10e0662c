//! [`Settings`] to [`Deployment`]: every check and every file read, once.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use vigil_auth::{Identity, TrustStore};
use vigil_modules::{ModuleRegistry, RegistryConfig};

use super::{Deployment, DeploymentError, Settings};
use crate::{Authority, HttpConfig, Relay, ServerConfig};

/// Where a setting left out points, relative to the working directory.
const DEFAULT_CERT: &str = "server.crt";
const DEFAULT_KEY: &str = "server.key";
const DEFAULT_TRUST: &str = "trusted-keys.json";
const DEFAULT_MODS: &str = "mods";
const DEFAULT_DATA_DIR: &str = "vigil-data";
/// The module version marks, in the data directory.
const MODULE_VERSIONS: &str = "module-versions.json";
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

pub(super) fn build(s: Settings) -> Result<Deployment, DeploymentError> {
    let cert = s.cert.unwrap_or_else(|| DEFAULT_CERT.into());
    let key = s.key.unwrap_or_else(|| DEFAULT_KEY.into());
    let trusted = s.trusted_keys.unwrap_or_else(|| DEFAULT_TRUST.into());
    let mods = s.mods.unwrap_or_else(|| DEFAULT_MODS.into());
    let listen = SocketAddr::new(
        s.interface.unwrap_or(LOOPBACK),
        s.port.unwrap_or(crate::DEFAULT_PORT),
    );

    let identity = Identity::load(&cert, &key)
        .map_err(|e| DeploymentError::context("cannot load the server identity", e))?;
    let trust = TrustStore::load(&trusted)
        .map_err(|e| DeploymentError::context("cannot load the trust file", e))?;
    let trust_watch = match trust.watch() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "trust file changes will not be noticed");
            None
        }
    };
    vigil_auth::check_permissions(&mods, "mods directory")
        .map_err(|e| DeploymentError::file(&mods, "mods directory", e))?;

    // State: token, audit log, replay guard, module version marks. Made
    // before the registry opens, which reads the marks.
    let data_dir = s.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    vigil_auth::create_private_dir(&data_dir)
        .map_err(|e| DeploymentError::context("cannot create the data directory", e))?;
    vigil_auth::check_permissions(&data_dir, "data directory")
        .map_err(|e| DeploymentError::file(&data_dir, "data directory", e))?;

    let mut registry_config = RegistryConfig::new(&mods);
    if let Some(path) = &s.module_keys {
        registry_config.manifests = Some(load_module_trust(path, &data_dir.join(MODULE_VERSIONS))?);
    }
    if let Some(secs) = s.exec_timeout {
        registry_config.exec_timeout = seconds("exec_timeout", secs)?;
    }
    registry_config.host_program = s.module_host.clone();
    if let Some(mib) = s.module_memory_mib {
        if mib < 16 {
            return Err(DeploymentError::Invalid(format!(
                "module_memory_mib must be at least 16 (MiB), got {mib}: a module host needs room to load"
            )));
        }
        registry_config.sandbox.memory_mib = mib;
    }
    for (name, policy) in s.sandbox.clone().unwrap_or_default() {
        if !vigil_modules::is_module_name(&name) {
            return Err(DeploymentError::Invalid(format!(
                "[sandbox.{name:?}]: not a module file name (like hello.so)"
            )));
        }
        if policy.memory_mib < 16 {
            return Err(DeploymentError::Invalid(format!(
                "[sandbox.{name:?}] memory_mib must be at least 16 (MiB), got {}",
                policy.memory_mib
            )));
        }
        // Landlock can only allow what exists when the host starts.
        if let Some(missing) = policy.write_paths.iter().find(|p| !p.exists()) {
            return Err(DeploymentError::Invalid(format!(
                "[sandbox.{name:?}] write_paths: {} does not exist (create it first)",
                missing.display()
            )));
        }
        registry_config.sandboxes.insert(name, policy);
    }
    let registry = ModuleRegistry::open(registry_config).map_err(|e| {
        DeploymentError::context(
            &format!(
                "cannot open the module directory (create {} or pass --mods DIR)",
                mods.display()
            ),
            e,
        )
    })?;
    let module_watch = registry
        .watch()
        .map_err(|e| DeploymentError::context("cannot watch the module directory", e))?;

    let mut config = ServerConfig::new(listen, identity, trust);
    config.wss_listen = s.wss_port.map(|port| SocketAddr::new(listen.ip(), port));
    config.modules = Some(registry);
    if let Some(path) = s.authority_key {
        let id = s
            .authority_id
            .unwrap_or_else(|| crate::DEFAULT_AUTHORITY_ID.to_owned());
        let key = load_signing_key(&path)?;
        tracing::info!(
            %id,
            public_key = %vigil_command::encode_public_key(&key.verifying_key()),
            "authority key loaded"
        );
        config.authority = Some(Authority { key, id });
    }
    if let Some(secs) = s.heartbeat_interval {
        config.heartbeat_interval = seconds("heartbeat_interval", secs)?;
    }
    if let Some(n) = s.max_connections {
        config.max_connections = at_least_one("max_connections", n)?;
    }
    if let Some(n) = s.max_handshakes_per_source {
        config.max_handshakes_per_source = at_least_one("max_handshakes_per_source", n)?;
    }
    if let Some(secs) = s.handshake_timeout {
        config.handshake_timeout = seconds("handshake_timeout", secs)?;
    }
    if let Some(secs) = s.idle_timeout {
        config.idle_timeout = seconds("idle_timeout", secs)?;
    }
    if let Some(kib) = s.max_outbound_kib {
        config.max_outbound_bytes = at_least_one("max_outbound_kib", kib)?.saturating_mul(1024);
    }
    if let Some(secs) = s.write_stall_timeout {
        config.write_stall_timeout = seconds("write_stall_timeout", secs)?;
    }
    if let Some(n) = s.command_window {
        config.command_window = at_least_one("command_window", n)?;
    }
    if let Some(secs) = s.ack_timeout {
        config.ack_timeout = seconds("ack_timeout", secs)?;
    }
    if let Some(path) = vigil_proto::tree_path_of(None, s.tree_path.map(|p| p.0))
        .map_err(DeploymentError::Invalid)?
    {
        config.tree_path = path;
    }
    if let Some(secs) = s.refusal_summary_interval {
        config.refusal_summary_interval = seconds("refusal_summary_interval", secs)?;
    }
    if let Some(id) = s.agent_id {
        config.agent_id = id;
    }
    config.cluster = cluster(s.cluster, s.cluster_pins, s.cluster_lease)?;

    let token = match s.api_token {
        Some(token) => token,
        None => load_or_make_token(&data_dir.join("api-token"))?,
    };
    let mut audit_options = vigil_audit::AuditOptions::default();
    if let Some(kib) = s.audit_segment_kib {
        if kib < 4 {
            return Err(DeploymentError::Invalid(
                "audit_segment_kib must be at least 4".into(),
            ));
        }
        audit_options.segment_max_bytes = kib.saturating_mul(1024);
    }
    if let Some(hours) = s.audit_segment_hours {
        audit_options.segment_max_age = Some(seconds("audit_segment_hours", hours * 3600.0)?);
    }
    if let Some(n) = s.audit_keep_segments {
        audit_options.keep_segments = (n > 0).then_some(n);
    }
    if let Some(days) = s.audit_keep_days {
        audit_options.keep_age = Some(seconds("audit_keep_days", days * 86_400.0)?);
    }
    if let Some(kib) = s.audit_reserve_kib {
        audit_options.reserve_bytes = kib.saturating_mul(1024);
    }
    config.audit = Some(open_audit(&data_dir.join("audit.jsonl"), audit_options)?);

    let http_listen = SocketAddr::new(
        s.http_interface.unwrap_or(LOOPBACK),
        s.http_port.unwrap_or(crate::DEFAULT_HTTP_PORT),
    );
    let mut http = HttpConfig::new(http_listen, token);
    if let Some(secs) = s.http_read_timeout {
        http.read_timeout = seconds("http_read_timeout", secs)?;
    }
    if let Some(n) = s.http_max_connections {
        http.max_connections = at_least_one("http_max_connections", n)?;
    }
    if let Some(n) = s.http_max_waiting_per_source {
        http.max_waiting_per_source = at_least_one("http_max_waiting_per_source", n)?;
    }
    if let Some(path) = s.authorities {
        let relay = load_relay(&path, &data_dir.join("relay-replay.log"))?;
        config.emergency_relay = Some(relay.clone());
        http.relay = Some(relay);
    }

    Ok(Deployment {
        server: config,
        api: Some(http),
        trust_watch,
        module_watch: Some(module_watch),
    })
}

fn open_audit(
    path: &Path,
    options: vigil_audit::AuditOptions,
) -> Result<vigil_audit::AuditLog, DeploymentError> {
    let audit = vigil_audit::AuditLog::open(path, options)
        .map_err(|e| DeploymentError::file(path, "cannot open the audit log", e))?;
    let opened = audit.open_report();
    tracing::info!(
        path = %path.display(),
        records = opened.records,
        sealed_segments = opened.sealed_segments,
        first_seq = opened.first_seq,
        next_seq = opened.next_seq,
        reserve_bytes = opened.reserve_bytes,
        "audit log open (records: of the open segment, read whole; sealed segments: heads checked)"
    );
    Ok(audit)
}

fn load_relay(path: &Path, replay_path: &Path) -> Result<Relay, DeploymentError> {
    vigil_auth::check_permissions(path, "authorities file")
        .map_err(|e| DeploymentError::file(path, "authorities file", e))?;
    let authorities = vigil_command::Authorities::load(path)
        .map_err(|e| DeploymentError::file(path, "cannot load the authorities file", e))?;
    let guard = vigil_command::ReplayGuard::open(replay_path, SystemTime::now())
        .map_err(|e| DeploymentError::file(replay_path, "cannot open the replay guard", e))?;
    Ok(Relay::new(authorities, Arc::new(guard)))
}

/// The module keys, and the version marks (highest version loaded per
/// module, kept across restarts).
fn load_module_trust(
    keys: &Path,
    versions: &Path,
) -> Result<vigil_command::ModuleTrust, DeploymentError> {
    vigil_auth::check_permissions(keys, "module keys file")
        .map_err(|e| DeploymentError::file(keys, "module keys file", e))?;
    let module_keys = vigil_command::ModuleKeys::load(keys)
        .map_err(|e| DeploymentError::file(keys, "cannot load the module keys", e))?;
    let store = vigil_command::VersionStore::open(versions)
        .map_err(|e| DeploymentError::file(versions, "cannot open the module version marks", e))?;
    tracing::info!(
        keys = module_keys.len(),
        key_ids = ?module_keys.key_ids().collect::<Vec<_>>(),
        marks = store.all().len(),
        "module manifests required: a module loads only with a manifest signed by a module key"
    );
    Ok(vigil_command::ModuleTrust {
        keys: module_keys,
        versions: Arc::new(store),
    })
}

/// Reads the REST API token, or makes one (32 random bytes, hex) readable
/// by the owner only.
fn load_or_make_token(path: &Path) -> Result<String, DeploymentError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            vigil_auth::check_key_permissions(path, "API token file")
                .map_err(|e| DeploymentError::file(path, "API token file", e))?;
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(DeploymentError::Invalid(format!(
                    "the API token file {} is empty",
                    path.display()
                )));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| {
                DeploymentError::Invalid(format!("no randomness for the API token: {e}"))
            })?;
            let token = hex::encode(bytes);
            vigil_auth::write_file(path, format!("{token}\n").as_bytes(), 0o600, false)
                .map_err(|e| DeploymentError::file(path, "cannot write the API token", e))?;
            tracing::info!(path = %path.display(), "made a new REST API token");
            Ok(token)
        }
        Err(e) => Err(DeploymentError::file(path, "cannot read the API token", e)),
    }
}

/// Reads an Ed25519 signing key: base64 of its 32-byte seed, as
/// `vigilctl init` and `vigilctl keygen` write it.
fn load_signing_key(path: &Path) -> Result<vigil_command::SigningKey, DeploymentError> {
    vigil_auth::check_key_permissions(path, "authority key")
        .map_err(|e| DeploymentError::file(path, "authority key", e))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| DeploymentError::file(path, "cannot read authority key", e))?;
    vigil_command::decode_signing_key(text.trim()).map_err(|e| {
        DeploymentError::file(
            path,
            "authority key (expected base64 of a 32-byte Ed25519 seed)",
            e,
        )
    })
}

fn seconds(name: &str, value: f64) -> Result<Duration, DeploymentError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            DeploymentError::Invalid(format!(
                "{name} must be a positive number of seconds, got {value}"
            ))
        })
}

fn at_least_one(name: &str, n: usize) -> Result<usize, DeploymentError> {
    if n == 0 {
        return Err(DeploymentError::Invalid(format!(
            "{name} must be at least 1"
        )));
    }
    Ok(n)
}

/// The cluster settings, checked: URLs need pins, pins need URLs.
fn cluster(
    urls: Option<Vec<String>>,
    pins: Option<Vec<vigil_auth::Fingerprint>>,
    lease: Option<f64>,
) -> Result<Option<crate::ClusterSettings>, DeploymentError> {
    let urls: Vec<String> = urls
        .unwrap_or_default()
        .into_iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let pins = pins.unwrap_or_default();
    match (urls.is_empty(), pins.is_empty()) {
        (true, true) => return Ok(None),
        (true, false) => {
            return Err(DeploymentError::Invalid(
                "cluster_pins without cluster: give the NATS URLs to join (--cluster nats://HOST:PORT)".into(),
            ));
        }
        (false, true) => {
            return Err(DeploymentError::Invalid(
                "cluster without cluster_pins: give the fingerprints of the NATS nodes' keys (--cluster-pin HEX); vigil talks to no NATS node it has not pinned".into(),
            ));
        }
        (false, false) => {}
    }
    vigil_cluster::check_urls(&urls).map_err(|e| DeploymentError::Invalid(e.to_string()))?;
    let mut settings = crate::ClusterSettings::new(urls, pins);
    if let Some(secs) = lease {
        settings.lease = seconds("cluster_lease", secs)?.max(Duration::from_secs(1));
    }
    Ok(Some(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_and_pins_come_together() {
        let pin = vigil_auth::Fingerprint::of_spki(b"k");
        assert!(matches!(cluster(None, None, None), Ok(None)));
        assert!(cluster(Some(vec!["nats://127.0.0.1:4222".into()]), None, None).is_err());
        assert!(cluster(None, Some(vec![pin]), None).is_err());
        assert!(cluster(Some(vec!["http://x:1".into()]), Some(vec![pin]), None).is_err());
        let ok = cluster(
            Some(vec!["nats://127.0.0.1:4222".into(), " ".into()]),
            Some(vec![pin]),
            Some(3.0),
        );
        let Ok(Some(ok)) = ok else {
            panic!("valid cluster settings refused");
        };
        assert_eq!(ok.urls, vec!["nats://127.0.0.1:4222".to_owned()]);
        assert_eq!(ok.lease, Duration::from_secs(3));
    }

    #[test]
    fn durations_and_counts_refuse_zero_and_nonsense() {
        assert!(seconds("x", 0.0).is_err());
        assert!(seconds("x", -1.0).is_err());
        assert!(seconds("x", f64::NAN).is_err());
        assert_eq!(seconds("x", 1.5).ok(), Some(Duration::from_millis(1500)));
        assert!(at_least_one("n", 0).is_err());
        assert_eq!(at_least_one("n", 3).ok(), Some(3));
    }

    #[test]
    fn settings_layer_upper_over_lower() {
        let upper = Settings {
            port: Some(1),
            ..Settings::default()
        };
        let lower = Settings {
            port: Some(2),
            http_port: Some(3),
            ..Settings::default()
        };
        let merged = upper.or(lower);
        assert_eq!(merged.port, Some(1));
        assert_eq!(merged.http_port, Some(3));
    }

    #[test]
    fn tree_path_reads_text_and_lists() {
        let text: super::super::TreePath =
            "a/b//c".parse().unwrap_or(super::super::TreePath(vec![]));
        assert_eq!(text.0, ["a", "b", "c"]);
        let toml_list: Settings = toml::from_str("tree_path = [\"x\", \"y\"]").unwrap_or_default();
        assert_eq!(
            toml_list.tree_path.map(|p| p.0),
            Some(vec!["x".into(), "y".into()])
        );
        let toml_text: Settings = toml::from_str("tree_path = \"x/y\"").unwrap_or_default();
        assert_eq!(
            toml_text.tree_path.map(|p| p.0),
            Some(vec!["x".into(), "y".into()])
        );
    }
}
