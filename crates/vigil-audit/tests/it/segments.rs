//! Segments, retention and the reserve.

use std::path::{Path, PathBuf};

use serde_json::json;
use vigil_audit::{AuditError, AuditLog, AuditOptions, FaultInjection, ProblemKind, verify};

/// Options for small segments: `kib` each, `keep` sealed ones kept.
fn small(kib: u64, keep: Option<usize>) -> AuditOptions {
    let mut o = AuditOptions::default();
    o.segment_max_bytes = kib * 1024;
    o.keep_segments = keep;
    o
}

fn sealed(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("audit.jsonl."))
                .is_some_and(|r| r.len() == 41)
        })
        .collect();
    files.sort();
    files
}

async fn fill(log: &AuditLog, n: u64) {
    for i in 0..n {
        log.append("command.issued", json!({"n": i, "pad": "x".repeat(200)}))
            .await
            .expect("append");
    }
}

#[tokio::test]
async fn segments_seal_with_their_heads_and_the_chain_runs_across_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, small(8, None)).expect("open");
    fill(&log, 300).await;
    assert!(log.stats().segments_sealed >= 5, "{:?}", log.stats());
    log.close().await.expect("close");
    let files = sealed(dir.path());
    assert!(files.len() >= 5, "{files:?}");
    let report = verify(&path).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.segments, files.len() as u64 + 1);
    assert_eq!(report.first_seq, 1);
    assert_eq!(report.last_seq, report.records);
    // Opening reads the open segment only.
    let log = AuditLog::open(&path, small(8, None)).expect("reopen");
    let open = log.open_report().clone();
    assert_eq!(open.sealed_segments, files.len() as u64);
    assert!(open.records < 60, "read {} records", open.records);
    assert_eq!(open.next_seq, report.last_seq + 1);
    log.close().await.expect("close");
}

#[tokio::test]
async fn retention_deletes_old_segments_and_records_what_went() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, small(8, Some(2))).expect("open");
    fill(&log, 300).await;
    assert!(log.stats().segments_deleted >= 3, "{:?}", log.stats());
    log.close().await.expect("close");
    assert_eq!(sealed(dir.path()).len(), 2);
    let report = verify(&path).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert!(report.first_seq > 1, "{report}");
    let log = AuditLog::open(&path, small(8, Some(2))).expect("reopen");
    assert!(log.open_report().first_seq > 1);
    log.close().await.expect("close");
    // With every sealed segment gone, the open one carries the record.
    let log = AuditLog::open(&path, small(8, Some(0))).expect("open");
    fill(&log, 60).await;
    log.close().await.expect("close");
    assert!(sealed(dir.path()).is_empty());
    let report = verify(&path).expect("verify");
    assert!(report.is_ok(), "{report}");
    AuditLog::open(&path, small(8, Some(0)))
        .expect("reopen with no sealed segment")
        .close()
        .await
        .expect("close");
}

#[tokio::test]
async fn a_rotation_cut_short_is_finished_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, small(8, None)).expect("open");
    fill(&log, 40).await;
    log.close().await.expect("close");
    let files = sealed(dir.path());
    let last = files.last().expect("a sealed segment").clone();
    // Crash right after the seal, before the rename: the open segment
    // ends with its seal.
    std::fs::write(&path, b"").expect("empty");
    let open_len = std::fs::metadata(&path).expect("meta").len();
    assert_eq!(open_len, 0);
    std::fs::remove_file(&path).expect("rm");
    std::fs::rename(&last, &path).expect("un-rename");
    let log = AuditLog::open(&path, small(8, None)).expect("finish the rotation");
    assert!(last.exists(), "sealed again under its name");
    assert_eq!(
        std::fs::metadata(&path).expect("meta").len(),
        0,
        "a new open segment"
    );
    fill(&log, 3).await;
    log.close().await.expect("close");
    assert!(verify(&path).expect("verify").is_ok());
    // Crash right after the rename: no open segment at all.
    let log = AuditLog::open(&path, small(8, None)).expect("open");
    fill(&log, 40).await;
    log.close().await.expect("close");
    let lines = std::fs::read_to_string(&path).expect("read");
    if lines.is_empty() {
        std::fs::remove_file(&path).expect("rm");
    }
    let mut create = small(8, None);
    create.create = false;
    let log = AuditLog::open(&path, create).expect("a log with sealed segments goes on");
    fill(&log, 1).await;
    log.close().await.expect("close");
    assert!(verify(&path).expect("verify").is_ok());
}

#[tokio::test]
async fn a_changed_head_stops_the_open_and_a_changed_middle_is_found_by_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, small(8, None)).expect("open");
    fill(&log, 120).await;
    log.close().await.expect("close");
    let files = sealed(dir.path());
    let victim = files[1].clone();
    let text = std::fs::read_to_string(&victim).expect("read");
    // A record in the middle: open does not read it, verify does.
    let mut middle: Vec<String> = text.lines().map(str::to_owned).collect();
    middle[3] = middle[3].replacen("\"n\":", "\"m\":", 1);
    std::fs::write(&victim, middle.join("\n") + "\n").expect("tamper");
    let report = verify(&path).expect("verify");
    assert_eq!(report.file.as_deref(), Some(victim.as_path()), "{report}");
    AuditLog::open(&path, small(8, None))
        .expect("heads intact: opens")
        .close()
        .await
        .expect("close");
    // The seal: open refuses, naming the segment.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let seal = lines.pop().expect("seal");
    lines.push(seal.replacen("\"first_seq\":", "\"first_seq\":1", 1));
    std::fs::write(&victim, lines.join("\n") + "\n").expect("tamper");
    match AuditLog::open(&path, small(8, None)) {
        Err(AuditError::BrokenSegment { path: p, .. }) => assert_eq!(p, victim),
        other => panic!("{other:?}"),
    }
    std::fs::write(&victim, &text).expect("restore");
    // A deleted middle segment: open refuses.
    std::fs::remove_file(&files[2]).expect("rm");
    assert!(matches!(
        AuditLog::open(&path, small(8, None)),
        Err(AuditError::BrokenSegment { .. })
    ));
    // A deleted first segment, unrecorded: verify says so.
    std::fs::rename(&files[1], dir.path().join("moved")).expect("mv");
    std::fs::remove_file(&files[0]).expect("rm");
    let _ = std::fs::remove_file(&files[3]);
    let report = verify(&path).expect("verify");
    assert!(report.problem.is_some(), "{report}");
}

#[tokio::test]
async fn an_essential_record_uses_the_reserve_when_the_disk_is_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let faults = FaultInjection::new();
    let mut options = AuditOptions::default();
    options.fault_injection = Some(faults.clone());
    options.reserve_bytes = 64 * 1024;
    let log = AuditLog::open(&path, options.clone()).expect("open");
    assert_eq!(log.stats().reserve_bytes, 64 * 1024);
    faults.set_space_left(Some(0));
    let err = log
        .append("command.issued", json!({"n": 1}))
        .await
        .expect_err("full");
    assert!(err.failure().is_some_and(|f| f.is_disk_full()), "{err}");
    drop(log);
    // Opened again (as the server does after a failure): an essential
    // record goes through, with the space of the reserve.
    let log = AuditLog::open(&path, options).expect("reopen");
    log.append_essential("emergency.attempt", json!({"outcome": "verified"}))
        .await
        .expect("the reserve takes it");
    assert_eq!(log.stats().reserve_bytes, 0, "released");
    log.close().await.expect("close");
    let report = verify(&path).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.records, 1);
    let _ = ProblemKind::Incomplete;
}
