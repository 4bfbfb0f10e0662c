//! `vigilctl module keygen` and `vigilctl module sign`: offline module keys
//! and the signed manifests (`FILE.manifest`) that servers and clients with
//! `--module-keys` require.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use vigil_command::{MANIFEST_SUFFIX, ModuleKeys, ModuleManifest, SignedManifest, Timestamp};

/// How long before signing a manifest is valid by default, so that a
/// receiver whose clock is a little behind the signer's takes it.
const NOT_BEFORE_SLACK: Duration = Duration::from_secs(300);

/// `vigilctl module keygen`: writes a new key (mode 0600), adds its public
/// key to `keys_file` if given (made if missing), and prints its id.
pub(crate) fn keygen(out: &Path, keys_file: Option<&Path>, force: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        force || !out.exists(),
        "{} already exists; use --force to replace it (the old key is then lost, and \
         manifests it signed stop verifying where only the new one is listed)",
        out.display()
    );
    let key = vigil_command::generate_signing_key().context("cannot generate a key")?;
    let public = key.verifying_key();
    // Checks the key file before anything is written.
    let keys = match keys_file {
        Some(path) if path.exists() => {
            let existing = ModuleKeys::load(path)
                .with_context(|| format!("cannot add to the module keys {}", path.display()))?;
            Some(
                ModuleKeys::from_keys(existing.keys().copied().chain([public]))
                    .context("cannot add this key")?,
            )
        }
        Some(_) => Some(ModuleKeys::from_keys([public]).context("cannot list this key")?),
        None => None,
    };
    crate::init::write_signing_key(out, &key, force)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let id = vigil_command::key_id(&public);
    println!(
        "Wrote a new Ed25519 module key to {} (mode 0600). Keep it offline: whoever holds it",
        out.display()
    );
    println!("decides which module code servers load and clients trust.");
    println!("key id      {id}");
    println!("public key  {}", vigil_command::encode_public_key(&public));
    match (keys_file, keys) {
        (Some(path), Some(keys)) => {
            write_replacing(path, keys.to_json().as_bytes())?;
            println!();
            println!(
                "Listed it in {} ({} key(s)); give that file to the server and the clients",
                path.display(),
                keys.len()
            );
            println!("(--module-keys, or module_keys in their config files).");
        }
        _ => {
            let one = ModuleKeys::from_keys([public]).context("cannot list this key")?;
            println!();
            println!(
                "A module keys file that lists it (--module-keys on the server and the clients):"
            );
            print!("{}", one.to_json());
        }
    }
    Ok(())
}

/// The fields of `vigilctl module sign`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SignArgs {
    /// The module key: base64 of a 32-byte Ed25519 seed (`vigilctl module
    /// keygen`).
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
    /// The module's version: a whole number that only goes up for a name.
    /// Receivers refuse a version below the highest they trusted, and the
    /// same version with other bytes.
    #[arg(long, value_name = "N")]
    pub(crate) version: u64,
    /// When the manifest expires: an RFC 3339 time with its offset
    /// (2027-01-31T00:00:00Z) or a duration from now (90d, 12h, 30m, 3600s,
    /// 2w). Receivers refuse it from then on; sign again before.
    #[arg(long, value_name = "WHEN")]
    pub(crate) expires: String,
    /// When it becomes valid, in the same forms (a duration counts from
    /// now) [default: 5 minutes before now, for clocks a little behind].
    #[arg(long, value_name = "WHEN")]
    pub(crate) not_before: Option<String>,
    /// The module's name on the server, its file name in the mods
    /// directory (hello.so) [default: FILE's name].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// The platform it is built for, `<arch>-<os>` [default: this
    /// machine's, e.g. x86_64-linux].
    #[arg(long, value_name = "TARGET")]
    pub(crate) target: Option<String>,
    /// The module ABI version it exports [default: this vigil's].
    #[arg(long, value_name = "N")]
    pub(crate) abi: Option<u32>,
    /// The module file; the manifest is written beside it, as
    /// FILE.manifest.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
}

/// A time given as RFC 3339 (with an offset) or as a duration from `now`
/// (`90d`, `12h`, `30m`, `45s`, `2w`).
pub(crate) fn parse_when(text: &str, now: SystemTime) -> anyhow::Result<Timestamp> {
    let text = text.trim();
    if let Some(d) = parse_duration(text) {
        let at = now
            .checked_add(d)
            .with_context(|| format!("{text} from now is out of range"))?;
        return Timestamp::from_system_time(at).with_context(|| format!("{text:?}"));
    }
    Timestamp::parse(text).map_err(|e| {
        anyhow::anyhow!(
            "{text:?} is neither a duration (90d, 12h, 30m, 45s, 2w) nor an RFC 3339 time with \
             an offset (2027-01-31T00:00:00Z): {e}"
        )
    })
}

fn parse_duration(text: &str) -> Option<Duration> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

/// Where the manifest of `file` goes: `FILE.manifest`, beside it.
pub(crate) fn manifest_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(MANIFEST_SUFFIX);
    PathBuf::from(name)
}

/// Signs the module `args.file` as of `now`; the manifest, not written.
pub(crate) fn manifest_for(args: &SignArgs, now: SystemTime) -> anyhow::Result<SignedManifest> {
    let key = crate::sign::load_key(&args.key)?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read the module {}", args.file.display()))?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .with_context(|| format!("{} has no file name: give --name", args.file.display()))?,
    };
    anyhow::ensure!(
        vigil_modules::is_module_name(&name),
        "{name:?} is not a module name the server serves (a file name ending in {}, not \
         hidden); give --name, the name it will have in the mods directory",
        std::env::consts::DLL_SUFFIX
    );
    let target = args
        .target
        .clone()
        .unwrap_or_else(vigil_modules::host_target);
    if target == vigil_modules::host_target() {
        // What the server would refuse for sure, said before signing.
        vigil_modules::validate_elf(&bytes).with_context(|| {
            format!(
                "{} is not a module this machine's server would load",
                args.file.display()
            )
        })?;
    }
    let not_before = match &args.not_before {
        Some(text) => parse_when(text, now).context("--not-before")?,
        None => Timestamp::from_system_time(now - NOT_BEFORE_SLACK)
            .context("the system clock is out of range")?,
    };
    let expires = parse_when(&args.expires, now).context("--expires")?;
    if expires.to_system_time() <= now {
        bail!("--expires {} is not in the future", expires.isoformat());
    }
    let manifest = ModuleManifest {
        name,
        version: args.version,
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        target,
        abi: args.abi.unwrap_or(vigil_module_sdk::ABI_VERSION),
        not_before,
        expires,
    };
    manifest.sign(&key).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `vigilctl module sign`: writes `FILE.manifest` and prints what it says.
pub(crate) fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let signed = manifest_for(args, SystemTime::now())?;
    let out = manifest_path(&args.file);
    write_replacing(&out, signed.to_json().as_bytes())?;
    let m = signed.manifest();
    println!("Wrote {}:", out.display());
    println!("  name        {}", m.name);
    println!("  version     {}", m.version);
    println!("  sha256      {}", m.sha256);
    println!("  size        {}", m.size);
    println!("  target      {} (ABI {})", m.target, m.abi);
    println!("  valid       {} to {}", m.not_before, m.expires);
    println!("  key id      {}", signed.key_id());
    println!();
    println!(
        "Deploy both into the mods directory as {} and {}{MANIFEST_SUFFIX} (write each",
        m.name, m.name
    );
    println!("to a temporary name and rename it into place).");
    Ok(())
}

/// Writes `bytes` to a temporary name beside `path`, then renames it over
/// `path`.
fn write_replacing(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_or_rfc3339() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let in_90d = parse_when("90d", now).expect("duration");
        assert_eq!(
            in_90d.to_system_time(),
            now + Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            parse_when("2w", now).expect("weeks").to_system_time(),
            now + Duration::from_secs(14 * 86_400)
        );
        let fixed = parse_when("2027-01-31T00:00:00Z", now).expect("rfc3339");
        assert_eq!(fixed.isoformat(), "2027-01-31T00:00:00+00:00");
        for bad in ["90", "d", "90y", "2027-01-31T00:00:00", "-5m", "soon"] {
            assert!(parse_when(bad, now).is_err(), "{bad}");
        }
        assert_eq!(
            manifest_path(Path::new("out/hello.so")),
            PathBuf::from("out/hello.so.manifest")
        );
    }
}
