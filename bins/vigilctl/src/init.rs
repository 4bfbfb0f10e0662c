//! `vigilctl init`: a ready-to-run pair of identities, keys and configs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use vigil_auth::{Fingerprint, GeneratedIdentity, TrustFile, write_file};
use vigil_command::{Authorities, AuthorityKey, SigningKey, encode_public_key, encode_signing_key};

/// What `init` wrote.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) dir: PathBuf,
    pub(crate) server: Fingerprint,
    pub(crate) client: Fingerprint,
    pub(crate) authority: SigningKey,
    pub(crate) operator: SigningKey,
    /// The mods directory.
    pub(crate) mods: PathBuf,
}

/// File names inside the init directory.
pub(crate) const SERVER_CRT: &str = "server.crt";
pub(crate) const SERVER_KEY: &str = "server.key";
pub(crate) const CLIENT_CRT: &str = "client.crt";
pub(crate) const CLIENT_KEY: &str = "client.key";
pub(crate) const TRUST: &str = "trusted-keys.json";
pub(crate) const SERVER_TOML: &str = "server.toml";
pub(crate) const CLIENT_TOML: &str = "client.toml";
pub(crate) const MODS: &str = "mods";
pub(crate) const AUTHORITY_KEY: &str = "authority.key";
pub(crate) const OPERATOR_KEY: &str = "operator.key";
pub(crate) const AUTHORITIES: &str = "authorities.json";
pub(crate) const STATE: &str = "client-state";
pub(crate) const SERVER_DATA: &str = "server-data";

/// `wa_id` of the offline operator key.
pub(crate) const OPERATOR_ID: &str = "wa_operator";

/// Writes a signing key as base64 of its seed, readable by its owner only.
pub(crate) fn write_signing_key(path: &Path, key: &SigningKey, force: bool) -> anyhow::Result<()> {
    let text = format!("{}\n", encode_signing_key(key));
    write_file(path, text.as_bytes(), 0o600, force)?;
    Ok(())
}

/// Where the files the programs write go: beside the configs (relative
/// names), or, for a service install, under a state directory such as
/// `/var/lib/vigil` (absolute paths), since the configuration directory is
/// read-only to the service.
struct Places {
    mods: String,
    server_data: String,
    client_state: String,
}

impl Places {
    fn new(var: Option<&Path>) -> anyhow::Result<Places> {
        let Some(var) = var else {
            return Ok(Places {
                mods: MODS.into(),
                server_data: SERVER_DATA.into(),
                client_state: STATE.into(),
            });
        };
        anyhow::ensure!(
            var.is_absolute(),
            "--var-dir {} must be an absolute path",
            var.display()
        );
        let text = var
            .to_str()
            .filter(|t| !t.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--var-dir {}: use a path without quotes, backslashes or control characters",
                    var.display()
                )
            })?;
        Ok(Places {
            mods: format!("{text}/{MODS}"),
            server_data: format!("{text}/server"),
            client_state: format!("{text}/client"),
        })
    }
}

/// Writes server and client identities, the server's authority key, an
/// offline operator key, a trust file that trusts the client, an
/// authorities file for the client, and a config for each side that pins
/// the other. With `var`, the mods directory, the server's data and the
/// client's state go under it instead of beside the configs.
pub(crate) fn write(
    dir: &Path,
    interface: IpAddr,
    port: u16,
    http_port: u16,
    force: bool,
    var: Option<&Path>,
) -> anyhow::Result<Written> {
    let places = Places::new(var)?;
    vigil_auth::create_private_dir(dir)?;
    let names = [
        SERVER_CRT,
        SERVER_KEY,
        CLIENT_CRT,
        CLIENT_KEY,
        TRUST,
        SERVER_TOML,
        CLIENT_TOML,
        AUTHORITY_KEY,
        OPERATOR_KEY,
        AUTHORITIES,
    ];
    if !force {
        for name in names {
            let path = dir.join(name);
            anyhow::ensure!(
                !path.exists(),
                "{} already exists; use --force to replace the files in {}",
                path.display(),
                dir.display()
            );
        }
    }
    for sub in [&places.mods, &places.client_state] {
        vigil_auth::create_private_dir(&dir.join(sub))?;
    }
    let server = GeneratedIdentity::generate("vigil-server")?;
    let client = GeneratedIdentity::generate("vigil-client")?;
    server.write(&dir.join(SERVER_CRT), &dir.join(SERVER_KEY), force)?;
    client.write(&dir.join(CLIENT_CRT), &dir.join(CLIENT_KEY), force)?;
    let trust = TrustFile {
        trusted_fingerprints: vec![client.fingerprint],
    };
    write_file(&dir.join(TRUST), trust.to_json().as_bytes(), 0o644, force)?;

    let authority = vigil_command::generate_signing_key()?;
    let operator = vigil_command::generate_signing_key()?;
    write_signing_key(&dir.join(AUTHORITY_KEY), &authority, force)?;
    write_signing_key(&dir.join(OPERATOR_KEY), &operator, force)?;
    let authorities = Authorities::from_keys([
        AuthorityKey::new(
            Some(vigil_server::DEFAULT_AUTHORITY_ID.to_owned()),
            authority.verifying_key(),
            [vigil_client::RUN],
        )?,
        AuthorityKey::new(
            Some(OPERATOR_ID.to_owned()),
            operator.verifying_key(),
            [vigil_client::RUN, vigil_client::SHUTDOWN_NOW],
        )?,
    ])?;
    write_file(
        &dir.join(AUTHORITIES),
        authorities.to_json().as_bytes(),
        0o644,
        force,
    )?;

    let server_toml = format!(
        "# vigil-server configuration, written by `vigilctl init`.\n\
         # Paths are relative to this file.\n\
         interface = \"{interface}\"\n\
         port = {port}\n\
         cert = \"{SERVER_CRT}\"\n\
         key = \"{SERVER_KEY}\"\n\
         trusted_keys = \"{TRUST}\"\n\
         # Module dylibs (*.so) dropped here are loaded and announced to clients.\n\
         mods = \"{mods}\"\n\
         # Signs heartbeats and the server's own commands (keep it secret).\n\
         authority_key = \"{AUTHORITY_KEY}\"\n\
         heartbeat_interval = 5\n\
         # Keys whose signed commands the REST API relays and whose SHUTDOWN_NOW it obeys.\n\
         authorities = \"{AUTHORITIES}\"\n\
         # REST API (bearer token in {server_data}/api-token) and the audit log.\n\
         http_interface = \"{interface}\"\n\
         http_port = {http_port}\n\
         data_dir = \"{server_data}\"\n",
        mods = places.mods,
        server_data = places.server_data,
    );
    let connect_host = if interface.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        interface
    };
    let server_addr = std::net::SocketAddr::new(connect_host, port);
    let client_toml = format!(
        "# vigil-client configuration, written by `vigilctl init`.\n\
         # Paths are relative to this file.\n\
         server = \"{server_addr}\"\n\
         cert = \"{CLIENT_CRT}\"\n\
         key = \"{CLIENT_KEY}\"\n\
         # The server is trusted only if its key has this SHA-256 fingerprint.\n\
         server_fingerprint = \"{}\"\n\
         \n\
         # Signed commands: only these authority keys, each for its command types.\n\
         authorities = \"{AUTHORITIES}\"\n\
         # The server's authority public key, which signs heartbeats.\n\
         heartbeat_key = \"{}\"\n\
         # The replay guard lives here and survives restarts.\n\
         state_dir = \"{}\"\n\
         # No verified heartbeat or command for this long: run the break commands.\n\
         failsafe_timeout = 15\n\
         \n\
         # What a verified RUN command may run, by name. Its args reach the program\n\
         # as JSON on stdin and in VIGIL_ARGS; no shell unless `shell = true`.\n\
         [commands.uptime]\n\
         program = \"uptime\"\n\
         \n\
         [commands.echo]\n\
         program = \"echo\"\n\
         args = [\"vigil says hello\"]\n\
         \n\
         # Run in order when the failsafe fires, and before exiting on SHUTDOWN_NOW.\n\
         [[break_commands]]\n\
         command = \"echo\"\n\
         timeout = 10\n",
        server.fingerprint,
        encode_public_key(&authority.verifying_key()),
        places.client_state,
    );
    write_file(&dir.join(SERVER_TOML), server_toml.as_bytes(), 0o644, force)?;
    write_file(&dir.join(CLIENT_TOML), client_toml.as_bytes(), 0o644, force)?;
    Ok(Written {
        dir: dir.to_owned(),
        server: server.fingerprint,
        client: client.fingerprint,
        authority,
        operator,
        mods: dir.join(&places.mods),
    })
}

/// Tells the user what was written and how to start each side.
pub(crate) fn report(w: &Written) {
    let d = w.dir.display();
    println!("Wrote a server and a client identity to {d}:");
    println!("  server fingerprint  {}", w.server);
    println!(
        "  client fingerprint  {}  (trusted in {d}/{TRUST})",
        w.client
    );
    println!(
        "  server authority    {}  ({d}/{AUTHORITY_KEY}: signs heartbeats and RUN commands)",
        encode_public_key(&w.authority.verifying_key())
    );
    println!(
        "  operator key        {}  ({d}/{OPERATOR_KEY}: offline, RUN and SHUTDOWN_NOW)",
        encode_public_key(&w.operator.verifying_key())
    );
    println!();
    println!("Start the server:");
    println!("  vigil-server --config {d}/{SERVER_TOML}");
    println!("Then, in another terminal, the client (it pins the server's fingerprint):");
    println!("  vigil-client --config {d}/{CLIENT_TOML}");
    println!();
    println!(
        "Modules: drop a module dylib into {}/ (write a temporary name, then",
        w.mods.display()
    );
    println!("rename it to NAME.so); connected clients verify it and can run it:");
    println!("  vigil-client --config {d}/{CLIENT_TOML} exec hello.so world");
    println!();
    println!("To trust another client, add the output of `vigilctl fingerprint its.crt`");
    println!("to {d}/{TRUST}; the running server picks it up at once.");
    println!(
        "Keep {AUTHORITY_KEY} and {OPERATOR_KEY} secret; move {OPERATOR_KEY} off this machine."
    );
}
