//! `vigilctl keygen`: a new Ed25519 authority key.

use std::path::Path;

use anyhow::Context as _;
use serde_json::json;
use vigil_command::{AuthorityKey, encode_public_key};

/// Writes a new key to `out` (mode 0600) and prints its public key and
/// the authorities.json entry that enrols it.
pub(crate) fn run(
    out: &Path,
    id: Option<String>,
    commands: &[String],
    force: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        force || !out.exists(),
        "{} already exists; use --force to replace it (the old key is then lost)",
        out.display()
    );
    let key = vigil_command::generate_signing_key().context("cannot generate a key")?;
    // Checks the id and the command names before anything is written.
    let entry = AuthorityKey::new(id.clone(), key.verifying_key(), commands.iter().cloned())
        .context("cannot enrol this key")?;
    crate::init::write_signing_key(out, &key, force)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let public = encode_public_key(&key.verifying_key());
    // Written by hand to keep the file's order: id, public_key, commands.
    let mut fields = Vec::new();
    if let Some(id) = entry.id() {
        fields.push(format!("\"id\": {}", json!(id)));
    }
    fields.push(format!("\"public_key\": {}", json!(public)));
    fields.push(format!(
        "\"commands\": {}",
        json!(entry.commands().collect::<Vec<_>>())
    ));
    println!("Wrote a new Ed25519 key to {} (mode 0600).", out.display());
    println!("public key  {public}");
    println!();
    println!("To enrol it, add this entry to the \"authorities\" list of the authorities.json");
    println!("files of the clients (and of the server, to relay its commands or obey its");
    println!("SHUTDOWN_NOW):");
    println!("{{{}}}", fields.join(", "));
    Ok(())
}
