//! The writer thread: it alone touches the file after open, takes what
//! is queued, writes it in one write, syncs once and acknowledges it all
//! (group commit), and fails closed.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::reserve::Reserve;
use super::rotate::Kept;
use super::{AuditOptions, Msg, Pending, Receipt, Shared};
use crate::error::{AuditError, Failure, FailureStage};
use crate::hash::RecordHash;
use crate::record::{encode_body, finish_line, format_time};
use crate::sink::Sink;

/// The writer thread's state. It alone touches the file after open.
pub(super) struct Writer {
    pub(super) sink: Sink,
    pub(super) path: PathBuf,
    /// The file's identity, to notice it being removed or replaced.
    pub(super) dev: u64,
    pub(super) ino: u64,
    /// Length of the file up to the last acknowledged record.
    pub(super) len: u64,
    pub(super) next_seq: u64,
    pub(super) prev: RecordHash,
    pub(super) max_batch: usize,
    pub(super) shared: Arc<Shared>,
    /// The seq of the open segment's first record (or of the next record,
    /// when it has none).
    pub(super) segment_first: u64,
    /// When the open segment was started.
    pub(super) segment_opened: SystemTime,
    /// The sealed segments kept, oldest first.
    pub(super) kept: std::collections::VecDeque<Kept>,
    pub(super) reserve: Option<Reserve>,
    pub(super) options: AuditOptions,
}

impl Writer {
    /// Takes whatever is queued, commits it with one write and one sync,
    /// answers, and repeats; stops on close, on failure, or when every
    /// handle is gone.
    pub(super) fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut me = self;
        let mut batch: Vec<Pending> = Vec::new();
        let mut closers: Vec<oneshot::Sender<()>> = Vec::new();
        let mut probes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut buf = String::new();
        let failed: Option<Failure> = loop {
            let Some(first) = rx.blocking_recv() else {
                break None;
            };
            match first {
                Msg::Append(p) => batch.push(p),
                Msg::Close(tx) => closers.push(tx),
                Msg::Probe(tx) => probes.push(tx),
            }
            while closers.is_empty() && batch.len() < me.max_batch {
                match rx.try_recv() {
                    Ok(Msg::Append(p)) => batch.push(p),
                    Ok(Msg::Close(tx)) => closers.push(tx),
                    Ok(Msg::Probe(tx)) => probes.push(tx),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                match me.commit(&batch, &mut buf) {
                    Ok(receipts) => {
                        for (p, r) in batch.drain(..).zip(receipts) {
                            let _ = p.reply.send(Ok(r));
                        }
                    }
                    Err(failure) => break Some(failure),
                }
            }
            // Answered after the commit: a writer stuck in it answers none.
            for tx in probes.drain(..) {
                let _ = tx.send(());
            }
            if !closers.is_empty() {
                break None;
            }
        };
        // Release the file and its lock before anyone hears of the stop,
        // so that the log can be opened again at once. No record can slip
        // in meanwhile: only this thread writes, and it writes no more.
        let Writer {
            sink, path, shared, ..
        } = me;
        drop(sink);
        match failed {
            Some(failure) => {
                tracing::error!(
                    path = %path.display(),
                    %failure,
                    records = batch.len(),
                    "audit log write failed; refusing records until it is reopened"
                );
                let _ = shared.poison.set(failure.clone());
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(AuditError::Failed {
                        path: path.clone(),
                        failure: failure.clone(),
                    }));
                }
            }
            None => shared.closed.store(true, Ordering::SeqCst),
        }
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Append(p) => {
                    let err = match shared.poison.get() {
                        Some(failure) => AuditError::Poisoned {
                            path: path.clone(),
                            failure: failure.clone(),
                        },
                        None => AuditError::Closed { path: path.clone() },
                    };
                    let _ = p.reply.send(Err(err));
                }
                Msg::Close(tx) => closers.push(tx),
                // Dropped unanswered: the probe says the log has stopped.
                Msg::Probe(_) => {}
            }
        }
        for tx in closers {
            let _ = tx.send(());
        }
    }

    /// Commits a batch: seals the open segment first if the batch would
    /// take it past its size, or it is past its age; writes the batch's
    /// lines, syncs once and checks the file is still the one at the path.
    /// Nothing changes (seq, prev, length) unless all of it worked; on
    /// failure the file is cut back to its last acknowledged length. A
    /// batch holding an essential record that fails for want of space is
    /// tried again once the reserve is released.
    fn commit(&mut self, batch: &[Pending], buf: &mut String) -> Result<Vec<Receipt>, Failure> {
        let essential = batch.iter().any(|p| p.essential);
        let mut lines: Vec<(&str, &str)> = batch
            .iter()
            .map(|p| (p.kind.as_str(), p.details.as_str()))
            .collect();
        self.rotate_if_due(batch.len() as u64 * 256, essential)?;
        let receipts = self.write_records(&mut lines, buf, essential)?;
        let s = &self.shared;
        s.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        s.largest_batch
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        Ok(receipts)
    }

    /// Writes records (kind, canonical details) at the end of the open
    /// segment with one write and one sync; on a full disk, with an
    /// essential record among them, releases the reserve and tries once
    /// more.
    pub(super) fn write_records(
        &mut self,
        lines: &mut [(&str, &str)],
        buf: &mut String,
        essential: bool,
    ) -> Result<Vec<Receipt>, Failure> {
        match self.try_write(lines, buf) {
            Err(failure) if essential && failure.is_disk_full() && self.release_reserve() => {
                self.try_write(lines, buf)
            }
            other => other,
        }
    }

    fn try_write(
        &mut self,
        lines: &[(&str, &str)],
        buf: &mut String,
    ) -> Result<Vec<Receipt>, Failure> {
        buf.clear();
        let mut receipts = Vec::with_capacity(lines.len());
        let mut seq = self.next_seq;
        let mut prev = self.prev;
        let mut line = String::new();
        for (kind, details) in lines {
            line.clear();
            let time = format_time(SystemTime::now());
            encode_body(seq, &time, kind, details, &prev, &mut line);
            let hash = finish_line(&mut line);
            buf.push_str(&line);
            receipts.push(Receipt { seq, hash });
            prev = hash;
            seq += 1;
        }
        if let Err(e) = self.sink.write_all_at(buf.as_bytes(), self.len) {
            return Err(self.fail(FailureStage::Write, e));
        }
        if let Err(e) = self.sink.sync_data() {
            return Err(self.fail(FailureStage::Sync, e));
        }
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.check_same_file() {
            return Err(self.fail(FailureStage::FileGone, e));
        }
        self.len += buf.len() as u64;
        self.next_seq = seq;
        self.prev = prev;
        Ok(receipts)
    }

    /// After a failed step: cut the file back to its last acknowledged
    /// length and sync, best effort, and describe what happened.
    fn fail(&mut self, stage: FailureStage, source: io::Error) -> Failure {
        let restored = self
            .sink
            .set_len(self.len)
            .and_then(|()| self.sink.sync_data())
            .is_ok();
        Failure {
            stage,
            source: Arc::new(source),
            restored,
        }
    }

    /// Whether the path still names the file being written.
    fn check_same_file(&self) -> io::Result<()> {
        if self.sink.file.metadata()?.nlink() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the log file was removed",
            ));
        }
        let now = fs::metadata(&self.path)?;
        if (now.dev(), now.ino()) != (self.dev, self.ino) {
            return Err(io::Error::other("another file now has the log's name"));
        }
        Ok(())
    }
}
