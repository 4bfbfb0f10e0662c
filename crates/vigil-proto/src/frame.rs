//! The frame grammar: one line `API:TYPE:REF <payload>`.

use std::fmt;

use serde_json::{Map, Value};

use crate::ErrorCode;

/// Longest piece of a bad header quoted back in an error message.
const QUOTE_MAX: usize = 48;

/// One protocol frame: `API:TYPE:REF <payload>`.
///
/// `api` and `kind` are tokens of ASCII letters, digits, `_`, `-` and `.`;
/// `reference` is any run of visible ASCII characters (it may contain `:`
/// and may be empty); the payload is always a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    api: String,
    kind: String,
    reference: String,
    payload: Map<String, Value>,
}

/// Why a line is not a frame. Each of these is answered with an `err` frame;
/// none of them ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The line is not valid UTF-8.
    #[error("frame is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The line is empty.
    #[error("empty frame: expected `API:TYPE:REF <json>`")]
    Empty,
    /// The header is not `API:TYPE:REF`.
    #[error("header {header:?} is not `API:TYPE:REF`: {reason}")]
    BadHeader {
        /// The header as received, cut to a few dozen characters.
        header: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload is not JSON.
    #[error("payload is not valid JSON: {detail}")]
    BadJson {
        /// The frame's REF, so that the error can echo it.
        reference: String,
        /// The JSON parser's message.
        detail: String,
    },
    /// The payload is JSON but not an object.
    #[error("payload must be a JSON object, got {found}")]
    PayloadNotObject {
        /// The frame's REF, so that the error can echo it.
        reference: String,
        /// The JSON type that was found.
        found: &'static str,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({len} bytes without a newline)")]
    Truncated {
        /// How many bytes were pending.
        len: usize,
    },
}

impl FrameError {
    /// The error code to send back in an `err` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::InvalidUtf8 { .. } => ErrorCode::InvalidUtf8,
            FrameError::Empty | FrameError::BadHeader { .. } | FrameError::Truncated { .. } => {
                ErrorCode::BadHeader
            }
            FrameError::BadJson { .. } | FrameError::PayloadNotObject { .. } => ErrorCode::BadJson,
        }
    }

    /// The REF of the offending frame, when its header could be read.
    pub fn reference(&self) -> Option<&str> {
        match self {
            FrameError::BadJson { reference, .. }
            | FrameError::PayloadNotObject { reference, .. } => Some(reference),
            _ => None,
        }
    }
}

/// Why a [`Frame`] could not be built from parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// API or TYPE is empty or has a character outside `[A-Za-z0-9_.-]`.
    #[error("{which} {value:?} must be a non-empty token of [A-Za-z0-9_.-]")]
    BadToken {
        /// `"API"` or `"TYPE"`.
        which: &'static str,
        /// The rejected value.
        value: String,
    },
    /// REF has a character outside visible ASCII.
    #[error("REF {0:?} must be visible ASCII without spaces")]
    BadReference(String),
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn is_reference(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Frame {
    /// Builds a frame, checking that each part fits the grammar.
    pub fn new(
        api: impl Into<String>,
        kind: impl Into<String>,
        reference: impl Into<String>,
        payload: Map<String, Value>,
    ) -> Result<Frame, BuildError> {
        let (api, kind, reference) = (api.into(), kind.into(), reference.into());
        if !is_token(&api) {
            return Err(BuildError::BadToken {
                which: "API",
                value: api,
            });
        }
        if !is_token(&kind) {
            return Err(BuildError::BadToken {
                which: "TYPE",
                value: kind,
            });
        }
        if !is_reference(&reference) {
            return Err(BuildError::BadReference(reference));
        }
        Ok(Frame {
            api,
            kind,
            reference,
            payload,
        })
    }

    /// Builds a frame from parts known to be valid tokens (crate-internal constants).
    pub(crate) fn from_static(
        api: &'static str,
        kind: &'static str,
        reference: &str,
        payload: Map<String, Value>,
    ) -> Frame {
        debug_assert!(is_token(api) && is_token(kind));
        // A reference we echo came from a parsed frame, so it is valid; one
        // that is not (an embedder's mistake) is replaced rather than sent.
        let reference = if is_reference(reference) {
            reference.to_owned()
        } else {
            String::from("-")
        };
        Frame {
            api: api.to_owned(),
            kind: kind.to_owned(),
            reference,
            payload,
        }
    }

    /// The API part of the header (`mod`, `err`, ...).
    pub fn api(&self) -> &str {
        &self.api
    }

    /// The TYPE part of the header (`sync`, `verify_resp`, ...).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The REF part of the header; responses echo the request's.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The JSON payload.
    pub fn payload(&self) -> &Map<String, Value> {
        &self.payload
    }

    /// Takes the payload out of the frame.
    pub fn into_payload(self) -> Map<String, Value> {
        self.payload
    }

    /// Parses one line (without its `\n`; a trailing `\r` is ignored).
    ///
    /// The header and payload are split at the first space; the header is
    /// split on `:` at most twice, so REF may itself contain `:`. A line with
    /// no payload is read as `{}`.
    pub fn parse(line: &[u8]) -> Result<Frame, FrameError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|e| FrameError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        if line.trim().is_empty() {
            return Err(FrameError::Empty);
        }
        let (header, payload) = match line.split_once(' ') {
            Some((h, p)) => (h, p.trim()),
            None => (line, ""),
        };
        let bad = |reason| FrameError::BadHeader {
            header: quote(header),
            reason,
        };
        let mut parts = header.splitn(3, ':');
        let (Some(api), Some(kind), Some(reference)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected two `:` separators"));
        };
        if !is_token(api) {
            return Err(bad("API must be a token of [A-Za-z0-9_.-]"));
        }
        if !is_token(kind) {
            return Err(bad("TYPE must be a token of [A-Za-z0-9_.-]"));
        }
        if !is_reference(reference) {
            return Err(bad("REF must be visible ASCII"));
        }
        let payload = if payload.is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(payload) {
                Ok(Value::Object(map)) => map,
                Ok(other) => {
                    return Err(FrameError::PayloadNotObject {
                        reference: reference.to_owned(),
                        found: json_type(&other),
                    });
                }
                Err(e) => {
                    return Err(FrameError::BadJson {
                        reference: reference.to_owned(),
                        detail: e.to_string(),
                    });
                }
            }
        };
        Ok(Frame {
            api: api.to_owned(),
            kind: kind.to_owned(),
            reference: reference.to_owned(),
            payload,
        })
    }

    /// Appends the frame, with its trailing `\n`, to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.api.as_bytes());
        out.push(b':');
        out.extend_from_slice(self.kind.as_bytes());
        out.push(b':');
        out.extend_from_slice(self.reference.as_bytes());
        out.push(b' ');
        // Serializing a map of JSON values into a Vec cannot fail: no I/O,
        // and every key is a string.
        if serde_json::to_writer(&mut *out, &self.payload).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.push(b'\n');
    }

    /// The frame as bytes, with its trailing `\n`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }
}

impl fmt::Display for Frame {
    /// The header only (`api:type:ref`): payloads may be large or secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.api, self.kind, self.reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(line: &str, code: ErrorCode) {
        let err = Frame::parse(line.as_bytes()).expect_err(line);
        assert_eq!(err.code(), code, "{line:?}: {err}");
    }

    #[test]
    fn parses_the_seed_frames() {
        let f = Frame::parse(br#"mod:verify:abc {"mod":"hello.so"}"#).expect("frame");
        assert_eq!((f.api(), f.kind(), f.reference()), ("mod", "verify", "abc"));
        assert_eq!(f.payload()["mod"], "hello.so");

        let f = Frame::parse(b"mod:sync:1 {}\r").expect("frame");
        assert_eq!(f.reference(), "1");
        assert!(f.payload().is_empty());
    }

    #[test]
    fn reference_may_contain_colons_and_be_empty() {
        let f = Frame::parse(b"mod:sync:a:b:c {}").expect("frame");
        assert_eq!(f.reference(), "a:b:c");
        let f = Frame::parse(b"mod:sync: {}").expect("frame");
        assert_eq!(f.reference(), "");
    }

    #[test]
    fn missing_payload_is_empty_object() {
        let f = Frame::parse(b"sys:ping:7").expect("frame");
        assert!(f.payload().is_empty());
    }

    #[test]
    fn bad_lines() {
        check_err("", ErrorCode::BadHeader);
        check_err("   ", ErrorCode::BadHeader);
        check_err("modsync {}", ErrorCode::BadHeader);
        check_err("mod:sync {}", ErrorCode::BadHeader);
        check_err(":sync:1 {}", ErrorCode::BadHeader);
        check_err("mod::1 {}", ErrorCode::BadHeader);
        check_err("mo d:sync:1 {}", ErrorCode::BadHeader);
        check_err("mod:sync:1 {", ErrorCode::BadJson);
        check_err("mod:sync:1 [1,2]", ErrorCode::BadJson);
        check_err("mod:sync:1 {} {}", ErrorCode::BadJson);
        let err = Frame::parse(b"mod:sync:\xff {}").expect_err("utf8");
        assert_eq!(err.code(), ErrorCode::InvalidUtf8);
    }

    #[test]
    fn bad_json_keeps_the_reference() {
        let err = Frame::parse(b"mod:sync:r-9 nope").expect_err("json");
        assert_eq!(err.reference(), Some("r-9"));
    }

    #[test]
    fn encodes_one_line() {
        let mut payload = Map::new();
        payload.insert("args".into(), Value::String("a\nb".into()));
        let f = Frame::new("mod", "exec", "x:1", payload).expect("valid");
        let bytes = f.to_bytes();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(Frame::parse(&bytes[..bytes.len() - 1]).expect("parse"), f);
    }

    #[test]
    fn new_rejects_bad_parts() {
        assert!(Frame::new("m od", "x", "1", Map::new()).is_err());
        assert!(Frame::new("mod", "", "1", Map::new()).is_err());
        assert!(Frame::new("mod", "x", "a b", Map::new()).is_err());
    }
}
