//! Signed commands and heartbeats that a compromised server sends to a
//! real `vigil-client`: each bad one is refused with its code, nothing
//! runs, and only verified messages keep the failsafe from firing.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::json;
use vigil_command::{Heartbeat, SignedCommand, SigningKey, Timestamp, UnsignedCommand};
use vigil_proto::AckStatus;
use vigil_test_support::wait::eventually;

use crate::rogue::Rogue;
use crate::support::Deployment;

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
        assert_eq!(
            ack.code.as_ref().map(vigil_proto::AckCode::as_str),
            Some(*code),
            "{case}: {ack:?}"
        );
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
        (
            again.status,
            again.code.as_ref().map(vigil_proto::AckCode::as_str)
        ),
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
        after_restart
            .code
            .as_ref()
            .map(vigil_proto::AckCode::as_str),
        Some("replayed"),
        "C12 replayed after a restart: {after_restart:?}"
    );
    assert!(!dep.path("ran").exists(), "no replay ran");
}

/// C13: forged, stale and replayed heartbeats do not feed the failsafe: it
/// fires at its timeout while they keep coming, and runs the break
/// commands. Clock heartbeats (no nonce, even well signed and on time),
/// nonce heartbeats replayed, signed by a stranger or over a nonce the
/// client never sent are all refused.
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
    let nonce = peer.nonce.clone().expect("the client sent a nonce");
    let good = crate::rogue::nonce_beat(&server_key, 7, 1, &nonce);
    peer.send(good.as_bytes()).await;
    let never_sent = vigil_command::encode_nonce(&[42; 32]);
    for i in 0..30u64 {
        peer.send(good.as_bytes()).await;
        peer.send(crate::rogue::nonce_beat(&stranger, 7, 100 + i, &nonce).as_bytes())
            .await;
        peer.send(crate::rogue::nonce_beat(&server_key, 7, 300 + i, &never_sent).as_bytes())
            .await;
        // Clock heartbeats, good ones among them: this client checks by
        // nonce.
        peer.send(beat(&server_key, 7, 400 + i, now()).as_bytes())
            .await;
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

/// C14: 16 commands that run long, then a 17th: the 17th waits in the
/// client's queue (it is neither refused nor lost) and runs once a slot is
/// free; its acknowledgement says done.
#[tokio::test]
async fn c14_a_command_past_the_running_limit_waits_its_turn() {
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
    let started = std::time::Instant::now();
    let ack = peer.command("x1", &extra_one).await;
    assert_eq!(ack.status, AckStatus::Done, "{ack:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "it ran only once a slow one had finished"
    );
    eventually("it ran", || dep.path("ran").exists()).await;
}

/// A client config with `tree_path` set (a top-level key: before the
/// tables).
fn with_tree_path(base: String, path: &[&str]) -> String {
    format!("tree_path = {path:?}\n{base}")
}

/// C15: commands scoped by `target_tree_path` (signed). A client at
/// `fleet-a/agent-1` runs what is scoped to `fleet-a` or to itself, and
/// refuses what is scoped to another branch or below itself
/// (`outside_tree`); a client with no place in the tree refuses every
/// scoped command; nothing refused runs.
#[tokio::test]
async fn c15_commands_outside_the_clients_branch_are_refused() {
    let dep = Deployment::start(&[]).await;
    let rogue = Rogue::bind(&dep).await;
    let mark = mark_config(&dep);
    let mut client = dep.client_edited(
        |base| with_tree_path(format!("{base}\n{mark}"), &["fleet-a", "agent-1"]),
        &["--server", &rogue.addr()],
    );
    let mut peer = rogue.accept().await;
    peer.admitted().await;
    let operator = operator_key(&dep);
    let scoped = |id: &str, command_type: &str, path: &[&str]| {
        let path: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
        serde_json::to_string(&signed(
            &operator,
            "wa_operator",
            id,
            command_type,
            now(),
            |c| {
                c.target_tree_path = Some(path);
                if command_type == "SHUTDOWN_NOW" {
                    c.command = None;
                }
            },
        ))
        .expect("json")
    };
    for (id, command_type, path) in [
        ("c15-b", "RUN", &["fleet-b", "agent-999"][..]),
        ("c15-below", "RUN", &["fleet-a", "agent-1", "sub"][..]),
        ("c15-sibling", "RUN", &["fleet-a", "agent-2"][..]),
        ("c15-stop-b", "SHUTDOWN_NOW", &["fleet-b"][..]),
    ] {
        let ack = peer.command(id, &scoped(id, command_type, path)).await;
        assert_eq!(
            (
                ack.status,
                ack.code.as_ref().map(vigil_proto::AckCode::as_str)
            ),
            (AckStatus::Refused, Some("outside_tree")),
            "{id}: {ack:?}"
        );
    }
    assert!(
        !dep.path("ran").exists(),
        "a command outside the branch ran"
    );
    for (id, path) in [
        ("c15-fleet", &["fleet-a"][..]),
        ("c15-self", &["fleet-a", "agent-1"][..]),
    ] {
        let ack = peer.command(id, &scoped(id, "RUN", path)).await;
        assert_eq!(ack.status, AckStatus::Done, "{id}: {ack:?}");
    }
    assert!(dep.path("ran").exists());
    client.signal(rustix::process::Signal::KILL);
    let _ = client.exited().await;
    std::fs::remove_file(dep.path("ran")).expect("rm");

    // No tree path configured: every scoped command is refused.
    let _client = dep.client(&mark, &["--server", &rogue.addr()]);
    let mut peer = rogue.accept().await;
    peer.admitted().await;
    let ack = peer
        .command("c15-nowhere", &scoped("c15-nowhere", "RUN", &["fleet-a"]))
        .await;
    assert_eq!(
        (
            ack.status,
            ack.code.as_ref().map(vigil_proto::AckCode::as_str)
        ),
        (AckStatus::Refused, Some("outside_tree")),
        "{ack:?}"
    );
    assert!(!dep.path("ran").exists());
}

/// C16: floods of commands. (a) 5,000 commands pushed as fast as the
/// socket takes them, past any window: every one is answered (done, failed
/// or, past the client's queue, `busy` without spending its id), none is
/// dropped, and the heartbeats sent meanwhile keep the failsafe quiet. (b)
/// 110,000 `RUN` commands from the server's key within the freshness
/// window, paced by a window of 64 as the server paces them: every one is
/// answered, those past the key's share of the replay guard refused
/// (`replay_store_unavailable`); then the operator's `SHUTDOWN_NOW` is
/// obeyed, not refused for a guard that another key filled.
#[tokio::test]
async fn c16_a_flood_of_commands_is_answered_and_cannot_veto_a_shutdown() {
    let dep = Deployment::start(&[]).await;
    let operator = operator_key(&dep);
    let server_key = load_key(&dep.path("authority.key"));
    let line = |prefix: &str, i: usize, cmd: &SignedCommand| {
        format!(
            "cmd:exec:{prefix}{i} {}\n",
            serde_json::to_string(cmd).expect("json")
        )
    };
    // Everything is signed first: the client's failsafe (3 s) must hear
    // heartbeats from the start.
    let started = std::time::Instant::now();
    let burst: Vec<SignedCommand> = (0..5_000)
        .map(|i| {
            signed(
                &operator,
                "wa_operator",
                &format!("c16-a-{i}"),
                "RUN",
                now(),
                |c| {
                    c.command = Some("nothing".into());
                },
            )
        })
        .collect();
    let burst_frames: Vec<String> = burst
        .iter()
        .enumerate()
        .map(|(i, c)| line("a", i, c))
        .collect();
    let flood_frames: Vec<String> = (0..110_000)
        .map(|i| {
            let cmd = signed(
                &server_key,
                "vigil-server",
                &format!("c16-b-{i}"),
                "RUN",
                now(),
                |c| {
                    c.command = Some("nothing".into());
                },
            );
            line("b", i, &cmd)
        })
        .collect();
    let seq = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let beat = {
        let key = server_key.clone();
        move |_: u64, nonce: Option<&str>| {
            let seq = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            nonce.map_or_else(String::new, |n| crate::rogue::nonce_beat(&key, 16, seq, n))
        }
    };
    eprintln!("c16: signed in {:?}", started.elapsed());
    let rogue = Rogue::bind(&dep).await;
    let mut client = dep.client("", &["--server", &rogue.addr(), "--failsafe-timeout", "3"]);
    let mut peer = rogue.accept().await;
    peer.admitted().await;

    // (a) A burst with no window.
    let a = peer.flood(&burst_frames, None, beat.clone()).await;
    assert_eq!(a.acks.len(), burst_frames.len(), "commands were dropped");
    let busy: Vec<usize> = (0..burst_frames.len())
        .filter(|i| {
            a.acks[&format!("a{i}")]
                .code
                .as_ref()
                .map(vigil_proto::AckCode::as_str)
                == Some("busy")
        })
        .collect();
    for (i, ack) in (0..burst_frames.len()).map(|i| (i, &a.acks[&format!("a{i}")])) {
        let expected = matches!(ack.status, AckStatus::Failed)
            || (ack.status == AckStatus::Refused
                && ack.code.as_ref().map(vigil_proto::AckCode::as_str) == Some("busy"));
        assert!(expected, "a{i}: {ack:?}");
    }
    assert!(a.reports.is_empty(), "the failsafe fired: {:?}", a.reports);
    // A busy refusal did not spend the id: sent again, it runs.
    if let Some(&i) = busy.first() {
        let again = peer
            .command("again", &serde_json::to_string(&burst[i]).expect("json"))
            .await;
        assert_eq!(again.status, AckStatus::Failed, "{again:?}");
    }

    // (b) 110,000 from the server's key, windowed.
    let started = std::time::Instant::now();
    let b = peer.flood(&flood_frames, Some(64), beat.clone()).await;
    eprintln!("c16: 110,000 commands answered in {:?}", started.elapsed());
    assert_eq!(b.acks.len(), flood_frames.len(), "commands were dropped");
    let full = b
        .acks
        .values()
        .filter(|a| {
            a.code.as_ref().map(vigil_proto::AckCode::as_str) == Some("replay_store_unavailable")
        })
        .count();
    assert!(
        b.acks.values().all(|a| a.status == AckStatus::Failed
            || a.code.as_ref().map(vigil_proto::AckCode::as_str)
                == Some("replay_store_unavailable")),
        "every command ran or was refused for its key's share"
    );
    assert!(full > 0, "the key's share of the replay guard was reached");
    assert!(b.reports.is_empty(), "the failsafe fired: {:?}", b.reports);
    let stop = signed(
        &operator,
        "wa_operator",
        "c16-stop",
        "SHUTDOWN_NOW",
        now(),
        |c| {
            c.command = None;
        },
    );
    let ack = peer
        .command("stop", &serde_json::to_string(&stop).expect("json"))
        .await;
    assert_eq!(ack.status, AckStatus::Done, "{ack:?}");
    assert!(client.exited().await.success());
    assert!(!client.logged("dropped"), "the client dropped frames");
}
