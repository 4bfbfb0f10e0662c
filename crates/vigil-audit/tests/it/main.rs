//! Integration tests for vigil-audit: real files in temporary directories.

mod segments;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vigil_audit::{
    AuditError, AuditLog, AuditOptions, FailureStage, FaultInjection, OnCorruption, ProblemKind,
    Receipt, RecordHash, verify,
};

fn log_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("audit.jsonl")
}

fn open(path: &Path) -> AuditLog {
    AuditLog::open(path, AuditOptions::default()).expect("open")
}

fn details(i: u64) -> Value {
    json!({"n": i, "client": "4f2a", "args": ["-a", "b c"]})
}

/// Appends records `from..=to` one after the other.
async fn append_range(log: &AuditLog, from: u64, to: u64) -> Vec<Receipt> {
    let mut out = Vec::new();
    for i in from..=to {
        out.push(
            log.append("command.issued", details(i))
                .await
                .expect("append"),
        );
    }
    out
}

/// A closed log with `n` records.
async fn log_with(path: &Path, n: u64) -> Vec<Receipt> {
    let log = open(path);
    let receipts = append_range(&log, 1, n).await;
    log.close().await.expect("close");
    receipts
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read log")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write log");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

#[tokio::test]
async fn the_chain_continues_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let first = log_with(&path, 3).await;
    assert_eq!(
        first.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    let log = open(&path);
    let report = log.open_report().clone();
    assert!(!report.created);
    assert_eq!(report.records, 3);
    assert_eq!(report.next_seq, 4);
    assert_eq!(report.prev, first[2].hash);
    assert_eq!(report.torn_tail, None);
    let more = append_range(&log, 4, 5).await;
    log.close().await.expect("close");
    assert_eq!(more[0].seq, 4);

    let lines = read_lines(&path);
    assert_eq!(lines.len(), 5);
    let rec: Value = serde_json::from_str(&lines[3]).expect("json");
    assert_eq!(rec["prev"], first[2].hash.to_hex());
    assert_eq!(rec["hash"], more[0].hash.to_hex());

    let v = verify(&path).expect("verify");
    assert!(v.is_ok(), "{v}");
    assert_eq!((v.records, v.last_seq, v.last_hash), (5, 5, more[1].hash));
}

#[tokio::test]
async fn records_have_the_documented_shape_and_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let log = open(&path);
    assert!(log.open_report().created);
    let r = log
        .append(
            "handshake.accepted",
            json!({"z": 1.0, "a": "é\n\"/", "m": {"y": null, "b": [true, -2, 0.5]}}),
        )
        .await
        .expect("append");
    log.close().await.expect("close");

    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.ends_with("\"}\n"));
    let line = text.trim_end_matches('\n');
    let rec: Value = serde_json::from_str(line).expect("json");
    let keys: Vec<&str> = line
        .split("\":")
        .filter_map(|s| s.rsplit("{\"").next())
        .collect();
    assert!(keys.len() > 3, "{keys:?}");
    assert_eq!(rec["seq"], 1);
    assert_eq!(rec["kind"], "handshake.accepted");
    assert_eq!(rec["prev"], "0".repeat(64));
    let time = rec["time"].as_str().expect("time");
    assert_eq!(time.len(), 27, "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    // Members in order, details canonical: keys sorted, 1.0 written 1.
    let expected_prefix = format!(
        "{{\"seq\":1,\"time\":\"{time}\",\"kind\":\"handshake.accepted\",\"details\":{{\"a\":\"é\\n\\\"/\",\"m\":{{\"b\":[true,-2,0.5],\"y\":null}},\"z\":1}},\"prev\":\"{}\",\"hash\":\"",
        "0".repeat(64)
    );
    assert!(line.starts_with(&expected_prefix), "{line}");
    // The documented hash: the line less its last 75 bytes, plus `}`.
    let body = format!("{}}}", &line[..line.len() - 75]);
    let digest = hex::encode(Sha256::digest(body.as_bytes()));
    assert_eq!(rec["hash"], digest);
    assert_eq!(r.hash.to_hex(), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_gapless_and_share_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let log = open(&path);
    let tasks: Vec<_> = (0..1000u64)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append("command.issued", details(i)).await })
        })
        .collect();
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.expect("join").expect("append"));
    }
    let stats = log.stats();
    log.close().await.expect("close");

    let mut seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    assert_eq!(stats.records, 1000);
    assert_eq!(stats.syncs, stats.batches, "one sync per batch");
    assert!(
        stats.syncs <= 100,
        "1000 concurrent appends took {} syncs: no group commit",
        stats.syncs
    );
    assert!(stats.largest_batch >= 10, "{stats:?}");
    eprintln!("1000 concurrent appends: {stats:?}");

    // Each receipt names the line that holds its record.
    let lines = read_lines(&path);
    for r in &receipts {
        let rec: Value = serde_json::from_str(&lines[(r.seq - 1) as usize]).expect("json");
        assert_eq!(rec["seq"], r.seq);
        assert_eq!(rec["hash"], r.hash.to_hex());
    }
    let v = verify(&path).expect("verify");
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.records, 1000);
}

/// A mutation of a 6-record log and the problem verify must report.
struct Tamper {
    name: &'static str,
    mutate: fn(&mut Vec<String>),
    line: u64,
    check: fn(&ProblemKind) -> bool,
}

fn tampers() -> Vec<Tamper> {
    vec![
        Tamper {
            name: "edit a details field",
            mutate: |l| l[2] = l[2].replace("\"n\":3", "\"n\":4"),
            line: 3,
            check: |k| matches!(k, ProblemKind::HashMismatch { .. }),
        },
        Tamper {
            name: "edit the kind",
            mutate: |l| l[4] = l[4].replace("command.issued", "command.refused"),
            line: 5,
            check: |k| matches!(k, ProblemKind::HashMismatch { .. }),
        },
        Tamper {
            name: "delete a line",
            mutate: |l| {
                l.remove(2);
            },
            line: 3,
            check: |k| {
                matches!(
                    k,
                    ProblemKind::SeqGap {
                        expected: 3,
                        found: 4
                    }
                )
            },
        },
        Tamper {
            name: "delete the first line",
            mutate: |l| {
                l.remove(0);
            },
            line: 1,
            // The chain would start at seq 2, and no retention record says
            // why: the records before it were deleted unrecorded.
            check: |k| matches!(k, ProblemKind::HistoryDeleted { first_seq: 2 }),
        },
        Tamper {
            name: "swap two lines",
            mutate: |l| l.swap(2, 3),
            line: 3,
            check: |k| {
                matches!(
                    k,
                    ProblemKind::SeqGap {
                        expected: 3,
                        found: 4
                    }
                )
            },
        },
        Tamper {
            name: "duplicate a line",
            mutate: |l| {
                let dup = l[2].clone();
                l.insert(3, dup);
            },
            line: 4,
            check: |k| {
                matches!(
                    k,
                    ProblemKind::SeqRepeat {
                        expected: 4,
                        found: 3
                    }
                )
            },
        },
        Tamper {
            name: "bad JSON",
            mutate: |l| l[1] = "{\"seq\":2,".into(),
            line: 2,
            check: |k| matches!(k, ProblemKind::Malformed { .. }),
        },
        Tamper {
            name: "an extra field",
            mutate: |l| l[1] = l[1].replacen("{", "{\"x\":1,", 1),
            line: 2,
            check: |k| matches!(k, ProblemKind::Malformed { .. }),
        },
        Tamper {
            name: "an empty line",
            mutate: |l| l.insert(5, String::new()),
            line: 6,
            check: |k| matches!(k, ProblemKind::Malformed { .. }),
        },
        Tamper {
            name: "a rehashed record (edit, then fix its own hash)",
            mutate: |l| l[3] = rehash(&l[3].replace("\"n\":4", "\"n\":40")),
            line: 5,
            check: |k| matches!(k, ProblemKind::PrevMismatch { .. }),
        },
        Tamper {
            name: "a rehashed, non-canonical record",
            mutate: |l| l[3] = rehash(&l[3].replace("\"n\":4", "\"n\": 4")),
            line: 4,
            check: |k| matches!(k, ProblemKind::NotCanonical),
        },
    ]
}

/// Recomputes a line's `hash` from its body, as a forger would.
fn rehash(line: &str) -> String {
    let body = format!("{}}}", &line[..line.len() - 75]);
    let digest = hex::encode(Sha256::digest(body.as_bytes()));
    format!("{},\"hash\":\"{digest}\"}}", &line[..line.len() - 75])
}

#[tokio::test]
async fn tampering_is_reported_at_the_right_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clean = log_path(&dir);
    log_with(&clean, 6).await;
    let original = read_lines(&clean);

    for t in tampers() {
        let path = dir
            .path()
            .join(format!("{}.jsonl", t.name.replace(' ', "-")));
        let mut lines = original.clone();
        (t.mutate)(&mut lines);
        write_lines(&path, &lines);

        let v = verify(&path).expect("verify");
        let p = v
            .problem
            .clone()
            .unwrap_or_else(|| panic!("{}: not detected", t.name));
        assert_eq!(p.line, t.line, "{}: {p}", t.name);
        assert!((t.check)(&p.kind), "{}: {p}", t.name);
        assert_eq!(v.records, t.line - 1, "{}", t.name);
        assert_eq!(v.last_seq, t.line - 1, "{}", t.name);
        // The last good record is the line before the problem.
        let expected_hash = match t.line {
            1 => RecordHash::ZERO.to_hex(),
            n => {
                let rec: Value = serde_json::from_str(&lines[(n - 2) as usize]).expect("json");
                rec["hash"].as_str().expect("hash").to_owned()
            }
        };
        assert_eq!(v.last_hash.to_hex(), expected_hash, "{}", t.name);
        assert_eq!(p.expected_seq, t.line, "{}", t.name);
        assert!(
            p.to_string().starts_with(&format!("line {}", t.line)),
            "{p}"
        );

        // Opening refuses the same file, and says where.
        match AuditLog::open(&path, AuditOptions::default()) {
            Err(AuditError::Corrupt { problem, .. }) => assert_eq!(*problem, p, "{}", t.name),
            other => panic!("{}: open gave {other:?}", t.name),
        }
    }
}

#[tokio::test]
async fn a_broken_log_can_be_opened_anyway_and_continues_after_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    log_with(&path, 6).await;
    let mut lines = read_lines(&path);
    lines.remove(2);
    write_lines(&path, &lines);
    let last: Value = serde_json::from_str(&lines[4]).expect("json");

    let mut options = AuditOptions::default();
    options.on_corruption = OnCorruption::Continue;
    let log = AuditLog::open(&path, options).expect("open anyway");
    let report = log.open_report().clone();
    let problem = report.problem.expect("problem reported");
    assert_eq!((problem.line, problem.seq), (3, Some(4)));
    assert_eq!(report.records, 2);
    assert_eq!(report.next_seq, 7);
    assert_eq!(report.prev.to_hex(), last["hash"]);
    let r = log
        .append("audit.reopened", json!({}))
        .await
        .expect("append");
    assert_eq!(r.seq, 7);
    log.close().await.expect("close");

    // The break stays visible.
    let v = verify(&path).expect("verify");
    assert_eq!(v.problem.map(|p| p.line), Some(3));
    let rec: Value = serde_json::from_str(&read_lines(&path)[5]).expect("json");
    assert_eq!(rec["prev"], last["hash"]);
}

#[tokio::test]
async fn a_torn_tail_is_saved_cut_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let receipts = log_with(&path, 3).await;
    let good_len = file_len(&path);

    // A crash halfway through writing record 4.
    let torn = br#"{"seq":4,"time":"2026-01-01T00:00:00.000000Z","kind":"comm"#;
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(torn);
    std::fs::write(&path, &bytes).expect("write");

    let v = verify(&path).expect("verify");
    let p = v.problem.expect("torn line reported");
    assert_eq!((p.line, p.kind), (4, ProblemKind::Incomplete));
    assert_eq!(v.records, 3);

    let log = open(&path);
    let tail = log.open_report().torn_tail.clone().expect("torn tail");
    assert_eq!((tail.offset, tail.len), (good_len, torn.len() as u64));
    assert_eq!(tail.saved_to, dir.path().join("audit.jsonl.torn"));
    assert_eq!(file_len(&path), good_len);
    assert_eq!(log.open_report().next_seq, 4);
    assert_eq!(log.open_report().prev, receipts[2].hash);
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&tail.saved_to).expect("torn file"))
            .expect("json");
    assert_eq!(saved["offset"], good_len);
    assert_eq!(saved["len"], torn.len());
    assert_eq!(saved["after_seq"], 3);
    assert_eq!(saved["bytes_hex"], hex::encode(torn));

    let r = log
        .append("command.issued", details(4))
        .await
        .expect("append");
    assert_eq!(r.seq, 4);
    log.close().await.expect("close");
    assert!(verify(&path).expect("verify").is_ok());
}

#[tokio::test]
async fn a_whole_record_without_its_newline_is_cut_too() {
    // It was never acknowledged: the writer syncs the newline with the line.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    log_with(&path, 2).await;
    let before = file_len(&path);
    log_with_more(&path, 1).await;
    let full = std::fs::read(&path).expect("read");
    std::fs::write(&path, &full[..full.len() - 1]).expect("write");

    let log = open(&path);
    let tail = log.open_report().torn_tail.clone().expect("torn tail");
    assert_eq!(tail.offset, before);
    assert_eq!(log.open_report().next_seq, 3);
    log.close().await.expect("close");
    assert_eq!(file_len(&path), before);

    // A second cut is added to the same index file.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(b"{\"seq\"");
    std::fs::write(&path, &bytes).expect("write");
    let log = open(&path);
    log.close().await.expect("close");
    let index = std::fs::read_to_string(&tail.saved_to).expect("torn file");
    assert_eq!(index.lines().count(), 2);
}

async fn log_with_more(path: &Path, n: u64) {
    let log = open(path);
    let next = log.open_report().next_seq;
    append_range(&log, next, next + n - 1).await;
    log.close().await.expect("close");
}

fn faulty() -> (AuditOptions, FaultInjection) {
    let faults = FaultInjection::new();
    let mut options = AuditOptions::default();
    options.fault_injection = Some(faults.clone());
    (options, faults)
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_leaves_no_half_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let (options, faults) = faulty();
    let log = AuditLog::open(&path, options).expect("open");
    append_range(&log, 1, 2).await;
    let good_len = file_len(&path);

    // Room for half a record: the write puts 50 bytes down, then ENOSPC.
    faults.set_space_left(Some(50));
    let err = log
        .append("command.issued", details(3))
        .await
        .expect_err("must fail");
    match &err {
        AuditError::Failed { failure, .. } => {
            assert_eq!(failure.stage, FailureStage::Write);
            assert_eq!(failure.source.raw_os_error(), Some(28), "ENOSPC");
            assert!(failure.restored);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(file_len(&path), good_len, "the half record was cut back");
    assert!(log.failure().is_some());

    // The log refuses from now on, even with room again.
    faults.set_space_left(None);
    let err = log
        .append("command.issued", details(3))
        .await
        .expect_err("poisoned");
    assert!(matches!(err, AuditError::Poisoned { .. }), "{err:?}");
    assert!(err.to_string().contains("open it again"), "{err}");
    assert_eq!(log.stats().records, 2);
    assert!(matches!(
        log.close().await,
        Err(AuditError::Poisoned { .. })
    ));

    // Opening again continues the chain with no gap.
    let log = open(&path);
    assert_eq!(log.open_report().torn_tail, None);
    let r = log
        .append("command.issued", details(3))
        .await
        .expect("append");
    assert_eq!(r.seq, 3);
    log.close().await.expect("close");
    let v = verify(&path).expect("verify");
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.records, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_of_a_failed_batch_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let (options, faults) = faulty();
    let log = AuditLog::open(&path, options).expect("open");
    append_range(&log, 1, 1).await;
    faults.set_space_left(Some(3000));
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append("command.issued", details(i)).await })
        })
        .collect();
    let mut acked = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(r) => acked.push(r.seq),
            Err(AuditError::Failed { .. } | AuditError::Poisoned { .. }) => failed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(failed > 0);
    assert_eq!(acked.len() + failed, 200);
    // Whatever was acknowledged is on disk, gapless; nothing else is.
    let _ = log.close().await;
    let v = verify(&path).expect("verify");
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.records, 1 + acked.len() as u64);
    acked.sort_unstable();
    assert_eq!(acked, (2..2 + acked.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_failed_sync_is_not_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let (options, faults) = faulty();
    let log = AuditLog::open(&path, options).expect("open");
    append_range(&log, 1, 2).await;
    faults.set_sync_failing(true);
    match log.append("command.issued", details(3)).await {
        Err(AuditError::Failed { failure, .. }) => {
            assert_eq!(failure.stage, FailureStage::Sync);
            assert_eq!(failure.source.raw_os_error(), Some(5), "EIO");
            // The cut-back's own sync failed too.
            assert!(!failure.restored);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.stats().records, 2);
    assert!(matches!(
        log.append("command.issued", details(3)).await,
        Err(AuditError::Poisoned { .. })
    ));
    // The writer let go of the file: it can be opened at once.
    let again = open(&path);
    assert_eq!(again.open_report().next_seq, 3);
    again.close().await.expect("close");
}

#[tokio::test]
async fn a_probe_is_answered_by_a_working_writer_and_refused_by_a_stopped_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let (options, faults) = faulty();
    let log = AuditLog::open(&path, options).expect("open");
    log.probe().await.expect("an idle writer answers");
    append_range(&log, 1, 3).await;
    log.probe().await.expect("a working writer answers");
    faults.set_sync_failing(true);
    let _ = log.append("command.issued", details(4)).await;
    assert!(matches!(
        log.probe().await,
        Err(AuditError::Poisoned { .. })
    ));
    let again = open(&path);
    again.probe().await.expect("the reopened log answers");
    again.close().await.expect("close");
    assert!(matches!(
        again.probe().await,
        Err(AuditError::Closed { .. })
    ));
}

#[tokio::test]
async fn a_removed_log_file_fails_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let log = open(&path);
    append_range(&log, 1, 1).await;
    std::fs::remove_file(&path).expect("remove");
    match log.append("command.issued", details(2)).await {
        Err(AuditError::Failed { failure, .. }) => {
            assert_eq!(failure.stage, FailureStage::FileGone)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        log.append("command.issued", details(2)).await,
        Err(AuditError::Poisoned { .. })
    ));
}

#[tokio::test]
async fn a_replaced_log_file_fails_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let log = open(&path);
    append_range(&log, 1, 1).await;
    let other = dir.path().join("other");
    std::fs::write(&other, b"").expect("write");
    std::fs::rename(&other, &path).expect("rename");
    match log.append("command.issued", details(2)).await {
        Err(AuditError::Failed { failure, .. }) => {
            assert_eq!(failure.stage, FailureStage::FileGone)
        }
        other => panic!("{other:?}"),
    }
}

/// A small tmpfs, unmounted on drop.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(dir: &Path, size: &str) -> Option<TmpfsMount> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| TmpfsMount(dir.to_owned()))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_really_full_file_system_fails_closed() {
    // A 64 KiB tmpfs fills up for root too. Mounting needs privileges;
    // where there are none the injected-fault tests above cover the path.
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mount) = TmpfsMount::new(dir.path(), "64k") else {
        eprintln!("cannot mount a tmpfs here: real full-disk test not run");
        return;
    };
    let path = mount.0.join("audit.jsonl");
    let log = open(&path);
    let big = "x".repeat(1000);
    let mut acked = 0u64;
    let failure = loop {
        match log.append("command.issued", json!({ "pad": big })).await {
            Ok(r) => {
                acked += 1;
                assert_eq!(r.seq, acked);
                assert!(acked < 1000, "the file system never filled up");
            }
            Err(AuditError::Failed { failure, .. }) => break failure,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(failure.stage, FailureStage::Write);
    assert_eq!(failure.source.raw_os_error(), Some(28), "ENOSPC");
    assert!(failure.restored);
    assert!(matches!(
        log.append("command.issued", json!({})).await,
        Err(AuditError::Poisoned { .. })
    ));
    let v = verify(&path).expect("verify");
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.records, acked);
    assert_eq!(file_len(&path), log.stats().bytes);
    drop(log);
    // Let the writer thread go before unmounting.
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(mount);
}

#[tokio::test]
async fn a_second_writer_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let log = open(&path);
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::Locked { .. })
    ));
    log.close().await.expect("close");
    assert!(matches!(
        log.append("command.issued", json!({})).await,
        Err(AuditError::Closed { .. })
    ));
    log.close().await.expect("closing twice is fine");
    let again = open(&path);
    again.close().await.expect("close");
}

#[tokio::test]
async fn bad_input_is_refused_without_using_a_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let mut options = AuditOptions::default();
    options.max_record_bytes = 1024;
    let log = AuditLog::open(&path, options).expect("open");
    for kind in ["", "has space", "new\nline", "é", &"k".repeat(129)] {
        assert!(
            matches!(
                log.append(kind, json!({})).await,
                Err(AuditError::InvalidKind { .. })
            ),
            "{kind:?}"
        );
    }
    for not_object in [json!(null), json!([1]), json!("x"), json!(3)] {
        assert!(matches!(
            log.append("k", not_object).await,
            Err(AuditError::DetailsNotObject { .. })
        ));
    }
    assert!(matches!(
        log.append("k", json!({"pad": "x".repeat(1000)})).await,
        Err(AuditError::RecordTooLarge { limit: 1024, .. })
    ));
    // Just under the limit is fine, and the bound holds for the real line.
    let r = log
        .append("k", json!({"pad": "x".repeat(1024 - 235 - 1 - 12)}))
        .await
        .expect("fits");
    assert_eq!(r.seq, 1);
    log.close().await.expect("close");
    assert!(file_len(&path) <= 1024);
}

#[test]
fn only_regular_files_are_opened() {
    for path in ["/dev/full", "/dev/null", "/tmp"] {
        assert!(
            matches!(
                AuditLog::open(path, AuditOptions::default()),
                Err(AuditError::NotRegularFile { .. })
            ),
            "{path}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = AuditOptions::default();
    options.create = false;
    assert!(matches!(
        AuditLog::open(log_path(&dir), options),
        Err(AuditError::NotFound { .. })
    ));
    assert!(matches!(verify(log_path(&dir)), Err(AuditError::Io { .. })));
}

#[tokio::test]
async fn an_empty_log_verifies_and_continues_from_seq_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    std::fs::write(&path, b"").expect("write");
    let v = verify(&path).expect("verify");
    assert!(v.is_ok());
    assert_eq!(
        (v.records, v.last_seq, v.last_hash),
        (0, 0, RecordHash::ZERO)
    );
    let log = open(&path);
    assert!(!log.open_report().created);
    assert_eq!(log.open_report().next_seq, 1);
    log.close().await.expect("close");
}

#[tokio::test]
async fn the_documented_python_check_accepts_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir);
    let log = open(&path);
    for d in [
        json!({"s": "tab\there \u{1} é 😀 \u{2028} /", "hash": "x", "f": 0.1, "g": 1e21}),
        json!({"neg": -7, "big": u64::MAX, "small": i64::MIN, "tiny": 5e-324}),
        json!({"nested": {"b": [{"z": 1, "a": 2}], "a": null}, "A": false}),
    ] {
        log.append("check.python", d).await.expect("append");
    }
    log.close().await.expect("close");

    // The crate docs' snippet, verbatim but for the file name.
    let docs = include_str!("../../src/lib.rs");
    let start = docs.find("//! import hashlib").expect("snippet");
    let snippet: String = docs[start..]
        .lines()
        .take_while(|l| *l != "//! ```")
        .map(|l| {
            l.strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "\"audit.jsonl\"",
            &format!("{:?}", path.display().to_string()),
        );
    let Ok(out) = Command::new("python3").arg("-c").arg(&snippet).output() else {
        eprintln!("python3 not installed: documented check not run");
        return;
    };
    assert!(
        out.status.success(),
        "{snippet}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
