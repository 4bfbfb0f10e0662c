//! vigil's audit log: append-only, hash-chained JSON lines that are on disk
//! before anyone is told they are.
//!
//! - [`AuditLog::open`] opens (or creates) a log, checks the open segment
//!   and the heads of the sealed ones, cuts off a torn last line and
//!   continues the chain.
//! - [`AuditLog::append`] returns a [`Receipt`] only once the record is
//!   written and synced; concurrent appends share one sync (group commit).
//!   [`AuditLog::append_essential`] can also draw on a disk reserve.
//! - [`verify`] checks every segment that is kept and reports the first
//!   broken or missing record with its file, line number and seq.
//!
//! **An acknowledged record is durable, and the log fails closed**: when a
//! record cannot be written and synced, `append` returns an error and the
//! record is not acknowledged, so the caller does not carry out what it
//! describes (vigil sends no command it could not record).
//!
//! ```
//! use serde_json::json;
//! use vigil_audit::{AuditLog, AuditOptions, verify};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("audit.jsonl");
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! rt.block_on(async {
//!     let log = AuditLog::open(&path, AuditOptions::default())?;
//!     let receipt = log
//!         .append("command.issued", json!({"command": "uptime", "client": "4f2a"}))
//!         .await?;
//!     assert_eq!(receipt.seq, 1);
//!     log.close().await
//! })?;
//!
//! let report = verify(&path)?;
//! assert!(report.is_ok());
//! assert_eq!((report.records, report.last_seq), (1, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Record format
//!
//! One record per line (UTF-8, ended by `\n`), a JSON object with these
//! members in this order:
//!
//! ```text
//! {"seq":1,"time":"2026-05-01T09:30:00.123456Z","kind":"command.issued","details":{"command":"uptime"},"prev":"0000…0000","hash":"9c1e…"}
//! ```
//!
//! | member | value |
//! |---|---|
//! | `seq` | 1 for the first record, then one more per line: no gaps, no repeats |
//! | `time` | the wall clock when the writer took the record: RFC 3339, UTC, microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (it goes back if the clock does; `seq` gives the order) |
//! | `kind` | what happened, e.g. `handshake.accepted`, `command.issued` (ASCII letters, digits, `.`, `_`, `-`) |
//! | `details` | a JSON object |
//! | `prev` | the previous record's `hash`; 64 zeros for the first record |
//! | `hash` | SHA-256 of the record's body, defined below |
//!
//! ## The hash
//!
//! The **body** of a record is the record without `hash`, in canonical
//! JSON:
//!
//! ```text
//! {"seq":SEQ,"time":TIME,"kind":KIND,"details":DETAILS,"prev":PREV}
//! ```
//!
//! and `hash` is the SHA-256 of the body's UTF-8 bytes, as 64 lowercase
//! hex digits. The line is the body with its final `}` replaced by
//! `,"hash":"HASH"}`, then `\n`. So the body can be taken back from a line
//! without any JSON library: **drop the newline and the last 75 bytes
//! (`,"hash":"` + 64 digits + `"}`), and add `}`**. Since `prev` is the
//! previous `hash`, and that hash covers every other byte of its line,
//! each record commits to the whole line before it.
//!
//! Canonical JSON, as this crate writes and [`verify`] requires:
//!
//! - no whitespace outside strings;
//! - object members sorted by key, comparing the keys' UTF-8 bytes (at
//!   every depth of `details`; the record's own members keep the order
//!   above);
//! - strings: `"` and `\` escaped with a backslash; U+0008, U+0009,
//!   U+000A, U+000C, U+000D as `\b`, `\t`, `\n`, `\f`, `\r`; other
//!   characters below U+0020 as `\u00xx` (lowercase hex); every other
//!   character as itself in UTF-8 (`/`, U+007F and non-ASCII are not
//!   escaped);
//! - numbers: an integer that fits in `u64` or `i64` in plain decimal;
//!   any other number as the nearest `f64`, written as ECMAScript's
//!   `Number.prototype.toString` writes it (`1.5`, `1` rather than `1.0`,
//!   `1e+21`, `1e-7`; `-0` as `0`). So `1.0` in `details` is stored as `1`.
//!
//! A checker needs only SHA-256 and a JSON parser; in Python:
//!
//! ```text
//! import hashlib, json
//! prev, seq = "0" * 64, 0
//! for n, line in enumerate(open("audit.jsonl", "rb"), 1):
//!     assert line.endswith(b"\n"), f"line {n}: incomplete"
//!     line = line[:-1]
//!     rec = json.loads(line)
//!     body = line[:-75] + b"}"
//!     assert hashlib.sha256(body).hexdigest() == rec["hash"], f"line {n}: hash"
//!     assert rec["seq"] == seq + 1, f"line {n}: seq"
//!     assert rec["prev"] == prev, f"line {n}: prev"
//!     prev, seq = rec["hash"], rec["seq"]
//! ```
//!
//! For a log split into segments (below), feed it the sealed files in name
//! order and then the open segment, as one stream; after retention has
//! deleted the oldest, start from the first kept record's `seq - 1` and
//! `prev`, which the retention record names.
//!
//! The chain makes changes evident, not impossible: whoever can write the
//! file can rewrite a suffix and recompute its hashes. Keep the last hash
//! somewhere else ([`VerifyReport::last_hash`], [`Receipt::hash`]) to pin
//! everything up to it.
//!
//! # Durability and group commit
//!
//! A single writer thread owns the file. [`AuditLog::append`] encodes the
//! details in the caller's task, queues the record and waits. The writer
//! takes everything queued, gives each record its seq, time, `prev` and
//! `hash`, writes the lines in one positioned write (`pwrite`), calls
//! `fdatasync` once, then acknowledges them all. While it syncs, new records queue up and form
//! the next batch, so many writers cost few syncs. A new file's directory
//! is synced too, so the file itself survives a crash.
//!
//! The writer is a dedicated thread rather than a tokio task because
//! `fdatasync` blocks for milliseconds: on a thread of its own it holds no
//! runtime worker, needs no `spawn_blocking` per batch, and keeps the
//! order of records trivially serial. The async API uses only tokio's
//! channels, so it works from any executor.
//!
//! # When writing fails: fail closed
//!
//! If a write, the sync, or the check that the path still names the file
//! (it was removed or replaced) fails, every record of that batch gets
//! [`AuditError::Failed`] and none is acknowledged. The writer cuts the
//! file back to the end of the last acknowledged record and syncs that
//! (best effort; [`Failure::restored`] says whether it worked), releases
//! the file, and from then on refuses every record with
//! [`AuditError::Poisoned`]. It does not retry by itself: after a failed
//! `fdatasync`, Linux may have dropped the unsynced pages and report the
//! next sync as a success, so the writer can no longer know what is on
//! disk. To go on, open the log again: that re-reads and re-checks the
//! file, and the chain continues from what is really there. Seq numbers
//! are never skipped and the chain never breaks: a failed batch's seqs are
//! given to the next records written.
//!
//! If the cut-back fails too, the file may keep part or all of the failed
//! batch: records that were never acknowledged (the log may say more than
//! happened, never less) and possibly a torn last line, which the next
//! open cuts off.
//!
//! # Opening: torn tails and broken chains
//!
//! A record is acknowledged only once its whole line, newline included, is
//! synced. So an unterminated last line (a crash or a failed write in the
//! middle of a batch) was never acknowledged. [`AuditLog::open`] saves its
//! bytes to `<log>.torn` (one JSON line per cut: `time`, `offset`, `len`,
//! `after_seq`, `bytes_hex`), syncs that, cuts the log back to its last
//! complete line, and reports it in [`OpenReport::torn_tail`] and in the
//! logs. Complete lines before it are kept, even those of a batch that was
//! never acknowledged.
//!
//! Any other problem (a bad line, a hash, seq or prev mismatch) means the
//! file was changed or damaged: open fails with [`AuditError::Corrupt`],
//! which says where. With [`OnCorruption::Continue`] it opens anyway,
//! reports where the chain breaks in [`OpenReport::problem`], and
//! continues after everything the file holds.
//!
//! One log has one writer: open takes an exclusive `flock` on the file, so
//! a second writer gets [`AuditError::Locked`]. [`verify`] takes no lock.
//!
//! # Segments, retention and the reserve
//!
//! The log is split into segments, so that opening it takes a time bounded
//! by the segment size rather than by its history. `path` is the **open
//! segment**; when a batch would take it past
//! [`AuditOptions::segment_max_bytes`] (16 MiB by default), or its first
//! record is older than [`AuditOptions::segment_max_age`] (a day), the
//! writer appends a **seal** record (kind [`SEAL_KIND`]), renames the file
//! to `<path>.<first seq>-<last seq>` (each seq in 20 digits, so the names
//! sort in chain order) and starts a new open segment, whose first record's
//! `prev` is the seal's hash. The chain runs on across files unbroken. A
//! seal's details say where its segment starts and name the seal before:
//!
//! ```text
//! {"first_seq":1,"previous_seal":null,"reason":"size","records":48130}
//! ```
//!
//! [`AuditLog::open`] reads the open segment whole and only the **heads**
//! of the sealed ones: the first and last record of each (each checked on
//! its own), each seal against the file's name, each segment's first
//! record and seal against the seal before, and that no segment is missing
//! between two. A record changed inside a sealed segment is found by
//! [`verify`], which reads everything. A rotation cut short by a crash
//! (the open segment ends with its seal, or is missing) is finished at
//! open.
//!
//! Past [`AuditOptions::keep_segments`] sealed segments (256 by default)
//! or [`AuditOptions::keep_age`], the oldest are deleted, after a record
//! of kind [`RETENTION_KIND`] lists what goes (file, first and last seq,
//! seal). [`verify`] accepts a log that starts after seq 1 only when such a
//! record names the deleted segment whose seal the first kept record
//! follows.
//!
//! [`AuditLog::append_essential`] is [`AuditLog::append`] for the few
//! records that stand between an authorized emergency action and its
//! being carried out: the log holds [`AuditOptions::reserve_bytes`] (1 MiB)
//! of allocated bytes in `<path>.reserve`, and when a batch holding an
//! essential record fails for want of space (`ENOSPC`, `EDQUOT`) it
//! releases them and writes the batch again. The reserve is made again at
//! the next open, when there is room.
//!
//! This crate is for Unix (it uses `pwrite`, `fdatasync`, `flock` and
//! inode numbers).
#![deny(missing_docs)]

mod error;
mod hash;
mod log;
mod problem;
mod record;
mod segment;
mod sink;
mod verify;

pub use error::{AuditError, Failure, FailureStage};
pub use hash::{RecordHash, RecordHashParseError};
pub use log::{
    AuditLog, AuditOptions, AuditStats, DEFAULT_KEEP_SEGMENTS, DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_QUEUE_CAPACITY, DEFAULT_RESERVE_BYTES, DEFAULT_SEGMENT_AGE, DEFAULT_SEGMENT_BYTES,
    MAX_KIND_BYTES, OnCorruption, OpenReport, Receipt, TornTail,
};
pub use problem::{MAX_LINE_BYTES, Problem, ProblemKind};
pub use segment::{RETENTION_KIND, SEAL_KIND};
#[cfg(feature = "test-util")]
pub use sink::FaultInjection;
pub use verify::{VerifyReport, verify, verify_reader};
