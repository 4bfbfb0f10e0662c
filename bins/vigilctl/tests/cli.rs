//! The three binaries as a user runs them: real processes, real files,
//! real TLS on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{START, Server, bin, free_port, init, lines_in, run, start_server, wait_lines};
use vigil_test_support::process::{Proc, Signal};

#[test]
fn help_explains_every_binary() {
    for (name, needles) in [
        (
            "vigil-server",
            &[
                "--interface",
                "--port",
                "8443",
                "127.0.0.1",
                "--trusted-keys",
                "VIGIL_PORT",
                "Exit status",
            ][..],
        ),
        (
            "vigil-client",
            &[
                "--server",
                "--server-fingerprint",
                "VIGIL_SERVER_FINGERPRINT",
                "sync",
            ][..],
        ),
        (
            "vigilctl",
            &[
                "init",
                "fingerprint",
                "demo",
                "send",
                "sign",
                "relay",
                "emergency-shutdown",
                "audit",
                "clients",
                "modules",
                "command",
                "keygen",
                "module",
                "VIGIL_API",
                "api-token",
            ][..],
        ),
    ] {
        let out = run(Command::new(bin(name)).arg("--help"));
        assert!(out.status.success(), "{name} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(text.contains(n), "{name} --help lacks {n:?}");
        }
    }
}

#[test]
fn every_vigilctl_subcommand_explains_itself() {
    for (sub, needles) in [
        (
            &["send"][..],
            &[
                "--wait",
                "--client",
                "--args",
                "--api",
                "--token-file",
                "--data-dir",
                "VIGIL_API",
            ][..],
        ),
        (
            &["sign"],
            &["--key", "--wa-id", "--type", "--expires-in", "sort_keys"],
        ),
        (&["relay"], &["--wait", "/v1/commands", "byte for byte"]),
        (
            &["emergency-shutdown"],
            &["--key", "--wa-id", "--target", "SHUTDOWN_NOW", "no token"],
        ),
        (&["audit", "verify"], &["line number", "seq"]),
        (&["clients"], &["/v1/clients"]),
        (&["modules"], &["/v1/modules"]),
        (&["command"], &["/v1/commands/ID"]),
        (
            &["keygen"],
            &["--out", "--id", "--commands", "--force", "0600"],
        ),
        (&["bench-send"], &["--connections", "--duration"]),
    ] {
        let out = run(Command::new(bin("vigilctl")).args(sub).arg("--help"));
        assert!(out.status.success(), "{sub:?} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(text.contains(n), "vigilctl {sub:?} --help lacks {n:?}");
        }
    }
}

#[test]
fn init_then_server_and_client_binaries_work_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = init(dir.path());
    assert!(report.contains("vigil-server --config"), "{report}");

    // `vigilctl fingerprint` agrees with the trust file init wrote.
    let out = run(Command::new(bin("vigilctl"))
        .arg("fingerprint")
        .arg(dir.path().join("client.crt")));
    let fp = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    let trust = std::fs::read_to_string(dir.path().join("trusted-keys.json")).expect("trust");
    assert!(trust.contains(&fp), "{trust} lacks {fp}");

    let server = start_server(dir.path(), &[]);
    let out = run(Command::new(bin("vigil-client"))
        .args([
            "--config",
            dir.path().join("client.toml").to_str().expect("utf8"),
        ])
        .arg("sync"));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // A client with an unknown key is told clearly, and exits 1.
    let other = tempfile::tempdir().expect("tempdir");
    init(other.path());
    let out = run(Command::new(bin("vigil-client"))
        .args([
            "--config",
            dir.path().join("client.toml").to_str().expect("utf8"),
        ])
        .arg("--cert")
        .arg(other.path().join("client.crt"))
        .arg("--key")
        .arg(other.path().join("client.key"))
        .arg("sync"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused our certificate"));

    // A module deployed into the init directory's mods/ runs through
    // `vigil-client exec`, after the client verified its bytes.
    let so = common::hello_so();
    vigil_modules::dev::deploy(&so, &dir.path().join("mods"), "hello.so").expect("deploy");
    let client_toml = dir.path().join("client.toml");
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = run(Command::new(bin("vigil-client"))
            .args(["--config", client_toml.to_str().expect("utf8")])
            .args(["exec", "hello.so", "big", "world"]));
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Hello, big world!"
    );
    let out = run(Command::new(bin("vigil-client"))
        .args(["--config", client_toml.to_str().expect("utf8")])
        .args(["exec", "nope.so"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("has no module \"nope.so\" (it has: hello.so)")
    );

    let status = server.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

#[test]
fn flags_override_environment_which_overrides_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The file says port 0 (init). The environment's and the flag's ports
    // must be named before the server starts, as the test is which one it
    // binds: free ports found beforehand (racy, see `free_port`).
    init(dir.path());
    let (env_port, flag_port) = (free_port(), free_port());
    let config = dir.path().join("server.toml");
    let config = config.to_str().expect("utf8");

    let env_port_s = env_port.to_string();
    let server = Server::start(
        Command::new(bin("vigil-server"))
            .args(["--config", config])
            .env("VIGIL_PORT", &env_port_s),
        "server",
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", env_port)).is_ok(),
        "env beats file"
    );
    drop(server);

    let flag_port_s = flag_port.to_string();
    let server = Server::start(
        Command::new(bin("vigil-server"))
            .args(["--config", config, "--port", &flag_port_s])
            .env("VIGIL_PORT", &env_port_s),
        "server",
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", flag_port)).is_ok(),
        "flag beats env"
    );
    drop(server);
}

#[test]
fn bad_identity_files_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path());
    let d = dir.path();
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a pem\n").expect("write");
    let unreadable = d.join("missing.crt");
    let cases: Vec<(Vec<PathBuf>, &str)> = vec![
        (
            vec![unreadable.clone(), d.join("server.key")],
            "missing.crt",
        ),
        (vec![d.join("server.crt"), unreadable], "missing.crt"),
        (vec![garbage.clone(), d.join("server.key")], "garbage.pem"),
        (vec![d.join("server.crt"), garbage], "garbage.pem"),
        (
            vec![d.join("server.key"), d.join("server.key")],
            "no certificate found",
        ),
        (
            vec![d.join("server.crt"), d.join("client.key")],
            "does not match",
        ),
    ];
    for (files, needle) in cases {
        let out = run(Command::new(bin("vigil-server"))
            .arg("--cert")
            .arg(&files[0])
            .arg("--key")
            .arg(&files[1])
            .arg("--trusted-keys")
            .arg(d.join("trusted-keys.json")));
        assert_eq!(out.status.code(), Some(2), "{files:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{files:?}: {err}");
    }
    // And a trust file that is not valid.
    std::fs::write(d.join("bad.json"), "{\"trusted_fingerprints\": [1]}").expect("write");
    let out = run(Command::new(bin("vigil-server"))
        .current_dir(d)
        .args(["--trusted-keys", "bad.json"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));
    // The client too.
    let out = run(Command::new(bin("vigil-client")).current_dir(d).args([
        "--cert",
        "nope.crt",
        "--server-fingerprint",
        &"ab".repeat(32),
        "sync",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.crt"));
    let out = run(Command::new(bin("vigil-client")).current_dir(d).arg("sync"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server-fingerprint"));
}

#[test]
fn openssl_made_server_certificate_works_like_a_vigilctl_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ed25519",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=VeriPyServer",
        ])
        .arg("-keyout")
        .arg(d.join("ossl.key"))
        .arg("-out")
        .arg(d.join("ossl.crt"))
        .output();
    let Ok(made) = made else {
        eprintln!("openssl not installed: not run");
        return;
    };
    assert!(made.status.success());
    let out = run(Command::new(bin("vigilctl"))
        .arg("fingerprint")
        .arg(d.join("ossl.crt")));
    let fp = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    let server = start_server(
        d,
        &[
            "--cert",
            d.join("ossl.crt").to_str().expect("utf8"),
            "--key",
            d.join("ossl.key").to_str().expect("utf8"),
        ],
    );
    let out = run(Command::new(bin("vigil-client"))
        .args(["--config", d.join("client.toml").to_str().expect("utf8")])
        .args(["--server-fingerprint", &fp, "sync"]));
    assert!(out.status.success());
    drop(server);
}

/// `vigilctl module keygen` and `module sign`: a key and its keys file, a
/// manifest beside the module that verifies for its bytes, and clear
/// refusals for what a receiver would refuse anyway.
#[test]
fn module_keygen_and_sign_write_a_manifest_that_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vigilctl = || Command::new(bin("vigilctl"));
    let out = run(vigilctl()
        .args(["module", "keygen", "--out"])
        .arg(d.join("module.key"))
        .arg("--keys-file")
        .arg(d.join("module-keys.json")));
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let keys = vigil_command::ModuleKeys::load(&d.join("module-keys.json")).expect("keys file");
    let id = keys.key_ids().next().expect("one key").to_owned();
    assert!(printed.contains(&id), "{printed}");
    // A second key joins the file; the first is not replaced.
    let again = run(vigilctl()
        .args(["module", "keygen", "--out"])
        .arg(d.join("module.key")));
    assert!(!again.status.success(), "replaced a key without --force");
    let second = run(vigilctl()
        .args(["module", "keygen", "--out"])
        .arg(d.join("second.key"))
        .arg("--keys-file")
        .arg(d.join("module-keys.json")));
    assert!(second.status.success());
    let keys = vigil_command::ModuleKeys::load(&d.join("module-keys.json")).expect("keys file");
    assert_eq!(keys.len(), 2);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = vigil_modules::dev::build_once(
        &root.join("mods/hello"),
        &[],
        Path::new(env!("CARGO_TARGET_TMPDIR")),
    )
    .expect("hello builds");
    let module = d.join("hello.so");
    std::fs::copy(&built, &module).expect("copy");
    let sign = |extra: &[&str]| {
        run(vigilctl()
            .args(["module", "sign", "--key"])
            .arg(d.join("module.key"))
            .args(extra)
            .arg(&module))
    };
    let out = sign(&["--version", "7", "--expires", "30d"]);
    assert!(out.status.success());
    let text = std::fs::read(d.join("hello.so.manifest")).expect("manifest beside it");
    let manifest = vigil_command::SignedManifest::from_json(&text).expect("parses");
    assert_eq!(manifest.key_id(), id);
    assert_eq!(manifest.manifest().name, "hello.so");
    assert_eq!(manifest.manifest().version, 7);
    let bytes = std::fs::read(&module).expect("module");
    let sum = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let platform = vigil_command::Platform {
        target: vigil_modules::host_target(),
        abi: 1,
    };
    keys.verify(
        &manifest,
        &vigil_command::ManifestCheck {
            name: "hello.so",
            sha256: &sum,
            size: bytes.len() as u64,
            platform: Some(&platform),
            highest: None,
            now: std::time::SystemTime::now(),
        },
    )
    .expect("the manifest verifies for the module");

    for (args, says) in [
        (
            &["--version", "1", "--expires", "2001-01-01T00:00:00Z"][..],
            "not in the future",
        ),
        (
            &["--version", "1", "--expires", "soon"][..],
            "neither a duration",
        ),
        (
            &["--version", "1", "--expires", "1d", "--name", "hello"][..],
            "not a module name",
        ),
    ] {
        let out = sign(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let missing = sign(&["--version", "1"]);
    assert_eq!(missing.status.code(), Some(2), "--expires is required");
    std::fs::write(&module, b"not a module").expect("write");
    let garbage = sign(&["--version", "8", "--expires", "1d"]);
    assert_eq!(garbage.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&garbage.stderr).contains("not a module this machine"));
}

#[test]
fn demo_runs_and_exits_zero() {
    let out = run(Command::new(bin("vigilctl")).arg("demo"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Demo complete"), "{text}");
}

/// Reliability cases F01 (server SIGKILL) and F02 (server SIGSTOP), see
/// docs/reliability.md.
#[test]
fn the_failsafe_fires_when_the_server_is_stopped_or_killed_and_rearms_in_between() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    let fired = d.join("fired.log");
    // A break command that leaves a trace: one line per firing.
    let mut client_toml = std::fs::read_to_string(d.join("client.toml")).expect("read");
    client_toml = client_toml.replace("failsafe_timeout = 15", "failsafe_timeout = 1.5");
    client_toml = client_toml.replace(
        "[[break_commands]]\ncommand = \"echo\"",
        "[commands.mark]\nprogram = \"echo fired >> \\\"$VIGIL_MARK\\\"\"\nshell = true\n\n[[break_commands]]\ncommand = \"mark\"",
    );
    std::fs::write(d.join("client.toml"), &client_toml).expect("write");
    let server = start_server(d, &["--heartbeat-interval", "0.25"]);
    let client = Proc::spawn(
        Command::new(bin("vigil-client"))
            .args(["--config", d.join("client.toml").to_str().expect("utf8")])
            .env("VIGIL_MARK", &fired),
        "client",
    );
    client.wait_for("server modules synced", 1, START);

    // Heartbeats flow: nothing fires over several timeouts.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(lines_in(&fired), 0, "fired while heartbeats flowed");

    // SIGSTOP: the TCP connection stays open and silent.
    server.proc.signal(Signal::STOP);
    wait_lines(&fired, 1, Duration::from_secs(15));
    server.proc.signal(Signal::CONT);
    client.wait_for("failsafe re-armed", 1, Duration::from_secs(15));

    // SIGKILL: the server is gone without a word.
    server.proc.signal(Signal::KILL);
    wait_lines(&fired, 2, Duration::from_secs(15));
    let port = server.addr.port().to_string();
    drop(server);

    // A new server process: the client reconnects and re-arms again. On
    // the port the first one bound, not on port 0: the running client
    // reconnects to the address in its config.
    let server = start_server(d, &["--heartbeat-interval", "0.25", "--port", &port]);
    client.wait_for("failsafe re-armed", 2, Duration::from_secs(20));
    server.proc.wait_for(
        "client reports a failsafe transition",
        2,
        Duration::from_secs(20),
    );
    assert_eq!(lines_in(&fired), 2, "fired once per outage");
}
