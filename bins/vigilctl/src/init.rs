//! `vigilctl init`: a ready-to-run pair of identities and configs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use vigil_auth::{Fingerprint, GeneratedIdentity, TrustFile, write_file};

/// What `init` wrote.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) dir: PathBuf,
    pub(crate) server: Fingerprint,
    pub(crate) client: Fingerprint,
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

/// Writes server and client identities, a trust file that trusts the
/// client, and a config for each side that pins the other.
pub(crate) fn write(
    dir: &Path,
    interface: IpAddr,
    port: u16,
    force: bool,
) -> anyhow::Result<Written> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !force {
        for name in [
            SERVER_CRT,
            SERVER_KEY,
            CLIENT_CRT,
            CLIENT_KEY,
            TRUST,
            SERVER_TOML,
            CLIENT_TOML,
        ] {
            let path = dir.join(name);
            anyhow::ensure!(
                !path.exists(),
                "{} already exists; use --force to replace the files in {}",
                path.display(),
                dir.display()
            );
        }
    }
    let mods = dir.join(MODS);
    std::fs::create_dir_all(&mods).with_context(|| format!("cannot create {}", mods.display()))?;
    let server = GeneratedIdentity::generate("vigil-server")?;
    let client = GeneratedIdentity::generate("vigil-client")?;
    server.write(&dir.join(SERVER_CRT), &dir.join(SERVER_KEY), force)?;
    client.write(&dir.join(CLIENT_CRT), &dir.join(CLIENT_KEY), force)?;
    let trust = TrustFile {
        trusted_fingerprints: vec![client.fingerprint],
    };
    write_file(&dir.join(TRUST), trust.to_json().as_bytes(), 0o644, force)?;

    let server_toml = format!(
        "# vigil-server configuration, written by `vigilctl init`.\n\
         # Paths are relative to this file.\n\
         interface = \"{interface}\"\n\
         port = {port}\n\
         cert = \"{SERVER_CRT}\"\n\
         key = \"{SERVER_KEY}\"\n\
         trusted_keys = \"{TRUST}\"\n\
         # Module dylibs (*.so) dropped here are loaded and announced to clients.\n\
         mods = \"{MODS}\"\n"
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
         server_fingerprint = \"{}\"\n",
        server.fingerprint
    );
    write_file(&dir.join(SERVER_TOML), server_toml.as_bytes(), 0o644, force)?;
    write_file(&dir.join(CLIENT_TOML), client_toml.as_bytes(), 0o644, force)?;
    Ok(Written {
        dir: dir.to_owned(),
        server: server.fingerprint,
        client: client.fingerprint,
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
    println!();
    println!("Start the server:");
    println!("  vigil-server --config {d}/{SERVER_TOML}");
    println!("Then, in another terminal, the client (it pins the server's fingerprint):");
    println!("  vigil-client --config {d}/{CLIENT_TOML}");
    println!();
    println!("Modules: drop a module dylib into {d}/{MODS}/ (write a temporary name, then");
    println!("rename it to NAME.so); connected clients verify it and can run it:");
    println!("  vigil-client --config {d}/{CLIENT_TOML} exec hello.so world");
    println!();
    println!("To trust another client, add the output of `vigilctl fingerprint its.crt`");
    println!("to {d}/{TRUST}; the running server picks it up at once.");
}
