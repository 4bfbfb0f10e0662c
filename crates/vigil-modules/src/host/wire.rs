//! The messages between the server and a module host, on the socket that
//! is the host's standard input.
//!
//! Each message is a frame: a 4-byte big-endian length, then that many
//! bytes, the first of which says what the message is (the framing of
//! `tokio_util::codec::LengthDelimitedCodec`, which the server side uses).
//!
//! | tag | direction     | rest of the frame                                     |
//! |-----|---------------|-------------------------------------------------------|
//! | `L` | server → host | 4-byte length of a JSON [`Load`] header, it, the module's bytes |
//! | `C` | server → host | the argument of one call                              |
//! | `R` | host → server | JSON [`Ready`]: the module loaded and is confined      |
//! | `E` | host → server | why the module could not be loaded or confined (text) |
//! | `O` | host → server | one call's result                                     |
//! | `F` | host → server | one call's error text                                 |
//! | `P` | host → server | one call's panic message                              |
//! | `X` | host → server | one call went past a limit (its result was too large) |
//!
//! A call (`C`) and each answer (`O`, `F`, `P`, `X`) start with the call's
//! 8-byte big-endian sequence number, which the answer repeats: a host
//! answers calls in the order it read them, one answer per call, and an
//! answer whose number is not the oldest call's (module code can write to
//! the socket: it runs in the same process) ends the host. The handshake's
//! frames are read against one deadline and a size cap of [`MAX_READY`].

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::SandboxPolicy;

/// Load a module.
pub(crate) const LOAD: u8 = b'L';
/// Run one call.
pub(crate) const CALL: u8 = b'C';
/// The module is loaded and confined.
pub(crate) const READY: u8 = b'R';
/// The module could not be loaded or confined.
pub(crate) const LOAD_ERROR: u8 = b'E';
/// A call's result.
pub(crate) const OK: u8 = b'O';
/// A call's error.
pub(crate) const FAILED: u8 = b'F';
/// A call panicked.
pub(crate) const PANICKED: u8 = b'P';
/// A call went past a limit.
pub(crate) const LIMIT: u8 = b'X';

/// Largest result a call may return. A result travels to the client as a
/// JSON string, which escaping can make six times larger (`\u0001`), and
/// a client takes frames of up to 48 MiB; answers also wait in the
/// server's memory until their session writes them.
pub(crate) const MAX_RESULT: usize = 1024 * 1024;
/// Largest answer frame the server reads: a result of [`MAX_RESULT`], its
/// tag and sequence number. Anything larger is a host that broke the
/// protocol.
pub(crate) const MAX_ANSWER: usize = MAX_RESULT + 9;

/// Appends a frame with `tag`, the sequence number `seq` and `body`.
pub(crate) fn numbered(out: &mut Vec<u8>, tag: u8, seq: u64, body: &[u8]) {
    let len = u32::try_from(body.len() + 9).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(tag);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
}

/// Splits a numbered frame's body (after its tag) into its sequence
/// number and the rest.
pub(crate) fn split_seq(body: &[u8]) -> Option<(u64, &[u8])> {
    let (seq, rest) = body.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*seq), rest))
}

/// Largest frame the host accepts: a module of the largest size the
/// registry takes, with room for the header.
pub(crate) const MAX_FRAME: usize = 256 * 1024 * 1024;
/// Largest `R` or `E` frame the server reads during the handshake.
pub(crate) const MAX_READY: usize = 64 * 1024;

/// What the host needs to load a module, besides its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Load {
    /// The module's file name, for messages.
    pub name: String,
    /// Lowercase hex SHA-256 the bytes must have.
    pub sum: String,
    /// The server's process id: a host whose parent is another process
    /// (the server died before the host could arrange to die with it)
    /// exits at once.
    pub parent: u32,
    /// What the module may do.
    pub policy: SandboxPolicy,
}

/// The host's answer to a load that worked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ready {
    /// The name the module gives itself.
    pub name: String,
    /// The module's description.
    pub description: String,
    /// What of the sandbox the kernel enforces, for the server's log.
    pub confinement: String,
}

/// Appends one frame with `tag` and `body` to `out`.
pub(crate) fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let len = u32::try_from(body.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(tag);
    out.extend_from_slice(body);
}

/// The `L` frame for `load` and `bytes`.
pub(crate) fn load_frame(load: &Load, bytes: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(load).unwrap_or_default();
    let mut body = Vec::with_capacity(4 + header.len() + bytes.len());
    body.extend_from_slice(&u32::try_from(header.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&header);
    body.extend_from_slice(bytes);
    let mut out = Vec::with_capacity(body.len() + 5);
    frame(&mut out, LOAD, &body);
    out
}

/// Splits the body of an `L` frame (after its tag) into header and bytes.
pub(crate) fn parse_load(body: &[u8]) -> Result<(Load, &[u8]), String> {
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        return Err("load message too short".into());
    };
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err("load header longer than its message".into());
    }
    let (header, bytes) = rest.split_at(len);
    let load = serde_json::from_slice(header).map_err(|e| format!("bad load header: {e}"))?;
    Ok((load, bytes))
}

/// Reads one frame: its tag and its body. `Ok(None)` at a clean end of
/// input (before a frame starts).
pub(crate) fn read_frame(
    r: &mut impl Read,
    body: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<u8>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)?;
    body.clear();
    r.take((len - 1) as u64).read_to_end(body)?;
    if body.len() != len - 1 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(tag[0]))
}

/// Writes one frame.
pub(crate) fn write_frame(w: &mut impl Write, tag: u8, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "answer too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&[tag])?;
    w.write_all(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        frame(&mut out, CALL, b"hello");
        frame(&mut out, CALL, b"");
        let load = Load {
            name: "m.so".into(),
            sum: "ab".into(),
            parent: 7,
            policy: SandboxPolicy::default(),
        };
        out.extend(load_frame(&load, b"\x7fELF"));
        let mut r = &out[..];
        let mut body = Vec::new();
        assert_eq!(
            read_frame(&mut r, &mut body, MAX_FRAME).expect("read"),
            Some(CALL)
        );
        assert_eq!(body, b"hello");
        assert_eq!(
            read_frame(&mut r, &mut body, MAX_FRAME).expect("read"),
            Some(CALL)
        );
        assert!(body.is_empty());
        assert_eq!(
            read_frame(&mut r, &mut body, MAX_FRAME).expect("read"),
            Some(LOAD)
        );
        let (back, bytes) = parse_load(&body).expect("parse");
        assert_eq!((back.name.as_str(), back.parent), ("m.so", 7));
        assert_eq!(bytes, b"\x7fELF");
        assert_eq!(read_frame(&mut r, &mut body, MAX_FRAME).expect("end"), None);
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut body = Vec::new();
        assert!(read_frame(&mut &[0u8, 0, 0, 0][..], &mut body, MAX_FRAME).is_err());
        assert!(read_frame(&mut &[0u8, 0, 0, 5, b'C', 1][..], &mut body, MAX_FRAME).is_err());
        assert!(read_frame(&mut &[0xffu8, 0xff, 0xff, 0xff][..], &mut body, MAX_FRAME).is_err());
        assert!(parse_load(&[0, 0, 0, 9, b'{']).is_err());
        assert!(split_seq(&[1, 2, 3]).is_none());
        let mut out = Vec::new();
        numbered(&mut out, OK, 7, b"hi");
        let mut body = Vec::new();
        assert_eq!(
            read_frame(&mut &out[..], &mut body, MAX_READY).expect("read"),
            Some(OK)
        );
        assert_eq!(split_seq(&body), Some((7, &b"hi"[..])));
        assert!(read_frame(&mut &out[..], &mut body, 4).is_err());
    }
}
