//! Log output for vigil's programs, safe to feed attacker-chosen text.
//!
//! vigil logs what reaches it: a command's `reason`, a parse error that
//! quotes a field name, a TLS error, a peer's address. Any of it may come
//! from an attacker, and a line break in it would let them write a whole
//! log line of their own ("EMERGENCY SHUTDOWN accepted"), or a terminal
//! escape sequence would let them rewrite what an operator sees.
//! [`EscapeControl`] wraps the writer that log lines go to and escapes,
//! inside each line, every character that could end a line or control a
//! terminal:
//!
//! - `\n` and `\r` as `\n` and `\r`, except the newline that ends a line;
//! - other C0 controls, DEL, the C1 controls (U+0080–U+009F, among them
//!   CSI) and U+2028 and U+2029 (line and paragraph separators) as
//!   `\u{..}`; tabs are kept. (Bytes that are not UTF-8 are escaped one
//!   by one, as `\x{..}`.)
//!
//! It relies on the formatter writing each event with one `write_all` of
//! a line that ends in `\n`, which `tracing-subscriber`'s `fmt` layer does.
//! [`init`] sets up that layer with this writer, without colours (their
//! escape sequences would be escaped too).
//!
//! With [`Format::Json`] each event is one JSON object per line
//! (`tracing-subscriber`'s JSON formatter): its encoder already escapes
//! line breaks and C0 controls inside strings, and [`EscapeJson`] escapes
//! what it leaves raw (DEL, the C1 controls, U+2028 and U+2029) as
//! `\u00XX` / `\u2028`, which JSON parsers read back as the same text.
//!
//! Field names are stable across the programs, for log pipelines:
//! `session` (a session's number on its server), `client` (a client's key
//! fingerprint, in full), `command_id`, `audit_seq` (an audit record's
//! sequence number), `error`, `peer` (a remote address).
//!
//! ```
//! use std::io::Write as _;
//! use vigil_log::EscapeControl;
//!
//! let mut out = EscapeControl::new(Vec::new());
//! out.write_all(b"refused: reason=\"x\nFORGED line\"\n")?;
//! assert_eq!(out.into_inner(), b"refused: reason=\"x\\nFORGED line\"\n");
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(missing_docs)]

use std::fmt::Write as _;
use std::io::{self, Write};

/// An [`io::Write`] that escapes line breaks and control characters inside
/// each write, keeping a final newline; see the [crate docs](crate).
#[derive(Debug)]
pub struct EscapeControl<W> {
    inner: W,
}

impl<W: Write> EscapeControl<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        EscapeControl { inner }
    }

    /// The wrapped writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// `text` with every line break and control character escaped (a final
/// `\n` kept), or `None` when it has none.
pub fn escape(text: &str) -> Option<String> {
    let (body, newline) = match text.strip_suffix('\n') {
        Some(body) => (body, true),
        None => (text, false),
    };
    if !body.chars().any(needs_escape) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    if newline {
        out.push('\n');
    }
    Some(out)
}

fn needs_escape(c: char) -> bool {
    c != '\t' && (c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

impl<W: Write> Write for EscapeControl<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => match escape(text) {
                Some(escaped) => self.inner.write_all(escaped.as_bytes())?,
                None => self.inner.write_all(buf)?,
            },
            Err(_) => {
                // Not text: escape control bytes one by one.
                let (body, newline) = match buf.split_last() {
                    Some((b'\n', body)) => (body, true),
                    _ => (buf, false),
                };
                let mut out = Vec::with_capacity(buf.len() + 16);
                for &b in body {
                    if (b < 0x20 && b != b'\t') || b == 0x7f {
                        out.extend_from_slice(format!("\\x{{{b:02x}}}").as_bytes());
                    } else {
                        out.push(b);
                    }
                }
                if newline {
                    out.push(b'\n');
                }
                self.inner.write_all(&out)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An [`io::Write`] for JSON log lines: escapes, inside each write, the
/// characters a JSON encoder may leave raw in strings but that a terminal
/// or a line-based tool takes as controls (DEL, U+0080–U+009F, U+2028,
/// U+2029), as JSON `\uXXXX` escapes. The JSON stays valid and means the
/// same text; structure characters are ASCII, so only string contents
/// change.
///
/// ```
/// use std::io::Write as _;
/// use vigil_log::EscapeJson;
///
/// let mut out = EscapeJson::new(Vec::new());
/// out.write_all("{\"reason\":\"csi \u{9b}2K\"}\n".as_bytes())?;
/// assert_eq!(out.into_inner(), b"{\"reason\":\"csi \\u009b2K\"}\n");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct EscapeJson<W> {
    inner: W,
}

impl<W: Write> EscapeJson<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        EscapeJson { inner }
    }

    /// The wrapped writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// What [`EscapeControl`] escapes, less what a JSON encoder already does
/// (C0 controls; tabs).
fn json_needs_escape(c: char) -> bool {
    c >= '\u{7f}' && needs_escape(c)
}

impl<W: Write> Write for EscapeJson<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if !text.chars().any(json_needs_escape) && matches!(text, std::borrow::Cow::Borrowed(_)) {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            if json_needs_escape(c) {
                let _ = write!(out, "\\u{:04x}", c as u32);
            } else {
                out.push(c);
            }
        }
        self.inner.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// One line of text per event (`TIME LEVEL target: message k=v ...`).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `fields` (with `message`), and `span`/`spans` for the spans the
    /// event is in (a session's span carries `session`, `client`, `peer`).
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown log format {other:?}: it is \"text\" or \"json\""
            )),
        }
    }
}

/// Sends `tracing` events to standard error, one line each, filtered by
/// `filter` (an `EnvFilter` directive such as `info` or
/// `vigil_server=debug`), as text through [`EscapeControl`] without
/// colours, or as JSON through [`EscapeJson`]. A bad directive falls back
/// to `info` and says so. Call it once, first thing in `main`; a second
/// call does nothing.
pub fn init(filter: &str, format: Format) {
    let (filter, bad) = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new("info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let installed = match format {
        Format::Text => builder
            .with_writer(|| EscapeControl::new(io::stderr()))
            .try_init()
            .is_ok(),
        Format::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(|| EscapeJson::new(io::stderr()))
            .try_init()
            .is_ok(),
    };
    if installed && let Some(e) = bad {
        tracing::warn!(error = %e, "bad log filter; logging at info");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let mut out = EscapeControl::new(Vec::new());
        out.write_all(input.as_bytes()).expect("write");
        assert_eq!(
            String::from_utf8(out.into_inner()).expect("utf-8"),
            expected
        );
    }

    #[test]
    fn line_breaks_and_controls_inside_a_line_are_escaped() {
        check("plain line\n", "plain line\n");
        check("a\nb\n", "a\\nb\n");
        check("a\r\nb", "a\\r\\nb");
        check("tab\tkept\n", "tab\tkept\n");
        check(
            "esc \u{1b}[2K csi \u{9b}2K\n",
            "esc \\u{1b}[2K csi \\u{9b}2K\n",
        );
        check("nul \0 del \u{7f}\n", "nul \\u{0} del \\u{7f}\n");
        check("ls \u{2028} ps \u{2029}\n", "ls \\u{2028} ps \\u{2029}\n");
        check("ünïcödé stays\n", "ünïcödé stays\n");
    }

    #[test]
    fn json_lines_keep_their_meaning_with_c1_and_separators_escaped() {
        let line = serde_json::json!({"reason": "csi \u{9b}2K del \u{7f} ls \u{2028} nl \n ok é"});
        let raw = format!("{line}\n");
        let mut out = EscapeJson::new(Vec::new());
        out.write_all(raw.as_bytes()).expect("write");
        let written = String::from_utf8(out.into_inner()).expect("utf-8");
        assert!(!written.chars().any(json_needs_escape), "{written}");
        assert!(
            !written.chars().any(|c| c.is_control() && c != '\n'),
            "{written:?}"
        );
        assert_eq!(written.matches('\n').count(), 1);
        let back: serde_json::Value = serde_json::from_str(&written).expect("still JSON");
        assert_eq!(back, line);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_escaped_bytewise() {
        let mut out = EscapeControl::new(Vec::new());
        out.write_all(b"\xff\n\x1b\n").expect("write");
        assert_eq!(out.into_inner(), b"\xff\\x{0a}\\x{1b}\n");
    }
}
