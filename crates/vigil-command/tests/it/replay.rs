//! The replay guard on real files: restarts, crashes, concurrency.

use std::sync::{Arc, Barrier};

use vigil_command::{ReplayError, ReplayGuard, SigningKey, UnsignedCommand, Verifier};

use crate::{at, ts};

#[test]
fn an_accepted_id_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("replay.log");
    {
        let guard = ReplayGuard::open(&path, at(0)).expect("open");
        guard.check_and_record("cmd_a", at(300), at(0)).expect("a");
        guard.check_and_record("cmd_b", at(30), at(0)).expect("b");
    } // dropped: the process "exits"
    let guard = ReplayGuard::open(&path, at(10)).expect("reopen");
    assert!(matches!(
        guard.check_and_record("cmd_a", at(300), at(10)),
        Err(ReplayError::Replayed { .. })
    ));
    assert!(guard.contains("cmd_b", at(10)));

    // Reopened after cmd_b expired: it is pruned from memory and file.
    drop(guard);
    let guard = ReplayGuard::open(&path, at(31)).expect("reopen");
    assert!(!guard.contains("cmd_b", at(31)));
    assert!(guard.contains("cmd_a", at(31)));
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().count(), 2, "header and cmd_a only: {text}");
    assert!(text.starts_with("vigil-replay-v1\n"));
}

#[test]
fn the_verifier_refuses_a_replay_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("replay.log");
    let key = SigningKey::from_bytes(&[21; 32]);
    let authorities = vigil_command::Authorities::from_keys([vigil_command::AuthorityKey::new(
        None,
        key.verifying_key(),
        ["SHUTDOWN_NOW"],
    )
    .expect("authority")])
    .expect("authorities");
    let cmd = UnsignedCommand::new("cmd_once", "SHUTDOWN_NOW", "wa", ts(0), "once")
        .sign(&key)
        .expect("sign");

    let v = Verifier::new(authorities.clone())
        .with_replay_guard(Arc::new(ReplayGuard::open(&path, at(0)).expect("open")));
    // `verify` records nothing and touches no file: the same command
    // verifies again, and the guard's file is as it was.
    let before = std::fs::read(&path).expect("read");
    v.verify(&cmd, at(1)).expect("checked");
    v.verify(&cmd, at(1))
        .expect("checked again: nothing was recorded");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "verify wrote nothing"
    );
    // `accept` records it, once.
    v.accept(&cmd, at(1)).expect("first time");
    assert_eq!(
        v.accept(&cmd, at(1)).map(|_| ()).map_err(|e| e.code()),
        Err("replayed")
    );
    drop(v);

    let v = Verifier::new(authorities)
        .with_replay_guard(Arc::new(ReplayGuard::open(&path, at(2)).expect("reopen")));
    assert_eq!(
        v.verify(&cmd, at(2)).map(|_| ()).map_err(|e| e.code()),
        Err("replayed")
    );
}

#[test]
fn a_torn_last_record_is_dropped_and_a_corrupt_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("replay.log");
    {
        let guard = ReplayGuard::open(&path, at(0)).expect("open");
        guard.check_and_record("cmd_a", at(300), at(0)).expect("a");
    }
    // A crash in the middle of appending cmd_b (never acknowledged).
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str("{\"id\":\"cmd_b\",\"forget_af");
    std::fs::write(&path, &text).expect("write");
    let guard = ReplayGuard::open(&path, at(1)).expect("reopen after torn write");
    assert!(guard.contains("cmd_a", at(1)));
    guard
        .check_and_record("cmd_b", at(300), at(1))
        .expect("b was never accepted");
    drop(guard);
    let reopened = std::fs::read_to_string(&path).expect("read");
    assert_eq!(reopened.lines().count(), 3, "{reopened}");

    // A damaged complete line is not guessed at.
    std::fs::write(&path, "vigil-replay-v1\n{\"id\":\"cmd_a\"}\n").expect("write");
    let e = ReplayGuard::open(&path, at(1)).expect_err("corrupt");
    assert!(matches!(e, ReplayError::Corrupt { line: 2, .. }), "{e}");
}

#[test]
fn another_file_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("important.txt");
    std::fs::write(&path, "precious data\n").expect("write");
    let e = ReplayGuard::open(&path, at(0)).expect_err("not a replay file");
    assert!(matches!(e, ReplayError::NotAReplayFile { .. }), "{e}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "precious data\n"
    );
}

#[test]
fn concurrent_callers_with_one_id_exactly_one_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = Arc::new(ReplayGuard::open(dir.path().join("replay.log"), at(0)).expect("open"));
    for round in 0..20 {
        let id = format!("cmd_{round}");
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (guard, barrier, id) = (Arc::clone(&guard), Arc::clone(&barrier), id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    guard.check_and_record(&id, at(300), at(0))
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| matches!(e, ReplayError::Replayed { .. }))
        );
    }
}
