//! Signed commands and heartbeats that a compromised server sends to a
//! real `vigil-client`: each bad one is refused with its code, nothing
//! runs, and only verified messages keep the failsafe from firing.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::json;
use vigil_command::{Heartbeat, SignedCommand, SigningKey, Timestamp, UnsignedCommand};
use vigil_proto::AckStatus;

use crate::rogue::Rogue;
use crate::support::{Deployment, eventually};

pub(crate) fn load_key(path: &Path) -> SigningKey {
    let text = std::fs::read_to_string(path).expect("key file");
    vigil_command::decode_signing_key(text.trim()).expect("key")
}

/// The offline operator key `vigilctl init` made (RUN and SHUTDOWN_NOW).
pub(crate) fn operator_key(dep: &Deployment) -> SigningKey {
    load_key(&dep.path("operator.key"))
}

pub(crate) fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now()).expect("time")
}

fn at(offset_secs: i64) -> Timestamp {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs.unsigned_abs())
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    Timestamp::from_system_time(t).expect("time")
}

/// A `mark` command (the client's program for it touches a file), signed
/// by `key` as `wa_id`, after `tweak`.
pub(crate) fn signed(
    key: &SigningKey,
    wa_id: &str,
    id: &str,
    command_type: &str,
    issued_at: Timestamp,
    tweak: impl FnOnce(&mut UnsignedCommand),
) -> SignedCommand {
    let mut c = UnsignedCommand::new(id, command_type, wa_id, issued_at, "catalogue");
    c.command = Some("mark".into());
    tweak(&mut c);
    c.sign(key).expect("sign")
}

/// The client's config additions: `mark` touches `ran` in the deployment.
fn mark_config(dep: &Deployment) -> String {
    format!(
        "[commands.mark]\nprogram = \"touch\"\nargs = [{:?}]\n",
        dep.path("ran").display().to_string()
    )
}

/// C01–C12: every kind of bad command a compromised server can send is
/// refused by the client with its own code, and nothing runs; a good
/// command runs once, and its replay is refused, also after a restart.
#[tokio::test]
async fn c01_to_c12_bad_commands_are_refused_by_the_client_and_nothing_runs() {
    let dep = Deployment::start(&[]).await;
    let rogue = Rogue::bind(&dep).await;
    let mut client = dep.client(&mark_config(&dep), &["--server", &rogue.addr()]);
    let mut peer = rogue.accept().await;
    peer.admitted().await;
    let operator = operator_key(&dep);
    let server_key = load_key(&dep.path("authority.key"));
    let stranger = vigil_command::generate_signing_key().expect("key");
    let me = dep.client_identity().fingerprint().to_hex();
    let json = |c: &SignedCommand| serde_json::to_value(c).expect("json");

    let mut forged = json(&signed(
        &operator,
        "wa_operator",
        "c01",
        "RUN",
        now(),
        |_| {},
    ));
    forged["reason"] = json!("not what was signed");
    let mut altered = json(&signed(
        &operator,
        "wa_operator",
        "c02",
        "RUN",
        now(),
        |c| {
            c.args = Some(json!({"n": 1}));
        },
    ));
    altered["args"] = json!({"n": 2});
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("C01 forged signature", forged, "invalid_signature"),
        (
            "C02 arguments altered after signing",
            altered,
            "invalid_signature",
        ),
        (
            "C03 stale (issued 6 minutes ago)",
            json(&signed(
                &operator,
                "wa_operator",
                "c03",
                "RUN",
                at(-360),
                |_| {},
            )),
            "timestamp_outside_window",
        ),
        (
            "C04 from the future (2 minutes ahead)",
            json(&signed(
                &operator,
                "wa_operator",
                "c04",
                "RUN",
                at(120),
                |_| {},
            )),
            "timestamp_outside_window",
        ),
        (
            "C05 expired",
            json(&signed(
                &operator,
                "wa_operator",
                "c05",
                "RUN",
                at(-10),
                |c| {
                    c.expires_at = Some(at(-5));
                },
            )),
            "expired",
        ),
        (
            "C06 signed by a key that is not enrolled",
            json(&signed(
                &stranger,
                "wa_operator",
                "c06",
                "RUN",
                now(),
                |_| {},
            )),
            "unauthorized_key",
        ),
        (
            "C07 a key not allowed that command type",
            json(&signed(
                &server_key,
                "vigil-server",
                "c07",
                "SHUTDOWN_NOW",
                now(),
                |_| {},
            )),
            "command_type_not_allowed",
        ),
        (
            "C08 signed under another authority's id",
            json(&signed(
                &operator,
                "vigil-server",
                "c08",
                "RUN",
                now(),
                |_| {},
            )),
            "wa_id_mismatch",
        ),
        (
            "C09 meant for another agent",
            json(&signed(
                &operator,
                "wa_operator",
                "c09",
                "RUN",
                now(),
                |c| {
                    c.target_agent_id = Some("0".repeat(64));
                },
            )),
            "wrong_target",
        ),
        (
            "C10 malformed (fields missing)",
            json!({"command_id": "c10", "command_type": "RUN"}),
            "malformed",
        ),
        (
            "C11 a command type the client does not run",
            json(&signed(
                &operator,
                "wa_operator",
                "c11",
                "REBOOT",
                now(),
                |_| {},
            )),
            "unsupported_command_type",
        ),
    ];
    for (i, (case, body, code)) in cases.iter().enumerate() {
        let ack = peer.command(&format!("r{i}"), &body.to_string()).await;
        assert_eq!(ack.status, AckStatus::Refused, "{case}: {ack:?}");
        assert_eq!(ack.code.as_deref(), Some(*code), "{case}: {ack:?}");
        assert!(!ack.detail.is_empty(), "{case}: the refusal says why");
    }
    assert!(!dep.path("ran").exists(), "no refused command ran");

    // C12: a good command runs once; its replay is refused, also by a
    // client restarted in between (the replay guard is on disk).
    let good = json(&signed(
        &operator,
        "wa_operator",
        "c12",
        "RUN",
        now(),
        |c| {
            c.target_agent_id = Some(me.clone());
        },
    ))
    .to_string();
    let ack = peer.command("good", &good).await;
    assert_eq!(ack.status, AckStatus::Done, "{ack:?}");
    eventually("the good command ran", || dep.path("ran").exists()).await;
    std::fs::remove_file(dep.path("ran")).expect("remove mark");
    let again = peer.command("again", &good).await;
    assert_eq!(
        (again.status, again.code.as_deref()),
        (AckStatus::Refused, Some("replayed")),
        "C12 replayed: {again:?}"
    );
    client.signal(rustix::process::Signal::KILL);
    client.exited().await;
    let _client = dep.client(&mark_config(&dep), &["--server", &rogue.addr()]);
    let mut peer = rogue.accept().await;
    peer.admitted().await;
    let after_restart = peer.command("restart", &good).await;
    assert_eq!(
        after_restart.code.as_deref(),
        Some("replayed"),
        "C12 replayed after a restart: {after_restart:?}"
    );
    assert!(!dep.path("ran").exists(), "no replay ran");
}

/// C13: forged, stale and replayed heartbeats do not feed the failsafe: it
/// fires at its timeout while they keep coming, and runs the break
/// commands.
#[tokio::test]
async fn c13_bad_heartbeats_do_not_feed_the_failsafe() {
    let dep = Deployment::start(&[]).await;
    let rogue = Rogue::bind(&dep).await;
    let extra = format!(
        "{}\n[commands.broke]\nprogram = \"touch\"\nargs = [{:?}]\n",
        mark_config(&dep),
        dep.path("failsafe-fired").display().to_string()
    );
    let _client = dep.client_edited(
        |base| crate::faults::with_break_command(format!("{base}\n{extra}")),
        &["--server", &rogue.addr(), "--failsafe-timeout", "2"],
    );
    let mut peer = rogue.accept().await;
    peer.admitted().await;
    let server_key = load_key(&dep.path("authority.key"));
    let stranger = vigil_command::generate_signing_key().expect("key");
    let beat = |key: &SigningKey, epoch: u64, seq: u64, sent_at: Timestamp| {
        let signed = Heartbeat {
            epoch,
            seq,
            sent_at,
        }
        .sign(key);
        format!(
            "hb:beat:hb{seq} {}\n",
            serde_json::to_string(&signed).expect("json")
        )
    };
    // One good beat, then for 3 s (past the 2 s timeout) only bad ones:
    // the good one replayed, forged ones, stale ones.
    let good = beat(&server_key, 7, 1, now());
    peer.send(good.as_bytes()).await;
    for i in 0..30u64 {
        peer.send(good.as_bytes()).await;
        peer.send(beat(&stranger, 7, 100 + i, now()).as_bytes())
            .await;
        peer.send(beat(&server_key, 7, 200 + i, at(-600)).as_bytes())
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = peer.failsafe_report().await;
    assert_eq!(event.as_deref(), Some("fired"));
    eventually("the break commands ran", || {
        dep.path("failsafe-fired").exists()
    })
    .await;
}

/// C14: a command past the limit of running ones (16) is refused `busy`
/// before it is verified, so its id is not spent: sent again when there is
/// room, it runs.
#[tokio::test]
async fn c14_a_busy_refusal_does_not_spend_the_command() {
    let dep = Deployment::start(&[]).await;
    let rogue = Rogue::bind(&dep).await;
    let extra = format!(
        "{}\n[commands.slow]\nprogram = \"sleep\"\nargs = [\"2\"]\n",
        mark_config(&dep)
    );
    let _client = dep.client(&extra, &["--server", &rogue.addr()]);
    let mut peer = rogue.accept().await;
    peer.admitted().await;
    let operator = operator_key(&dep);
    for i in 0..16 {
        let slow = signed(
            &operator,
            "wa_operator",
            &format!("c14-slow-{i}"),
            "RUN",
            now(),
            |c| {
                c.command = Some("slow".into());
            },
        );
        let line = format!(
            "cmd:exec:s{i} {}\n",
            serde_json::to_string(&slow).expect("json")
        );
        peer.send(line.as_bytes()).await;
    }
    let extra_one = serde_json::to_string(&signed(
        &operator,
        "wa_operator",
        "c14-extra",
        "RUN",
        now(),
        |_| {},
    ))
    .expect("json");
    let busy = peer.command("x1", &extra_one).await;
    assert_eq!(
        (busy.status, busy.code.as_deref()),
        (AckStatus::Refused, Some("busy")),
        "{busy:?}"
    );
    // Once the slow ones are done, the same command runs.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    let again = loop {
        let ack = peer.command("x2", &extra_one).await;
        if ack.code.as_deref() != Some("busy") {
            break ack;
        }
        assert!(std::time::Instant::now() < deadline, "never room again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(again.status, AckStatus::Done, "{again:?}");
    eventually("it ran", || dep.path("ran").exists()).await;
}
