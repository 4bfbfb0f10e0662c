//! A tokio-util codec for frames, with a size limit per direction.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{Frame, FrameError};

/// Default largest client-to-server frame: requests are small.
pub const DEFAULT_CLIENT_TO_SERVER: usize = 64 * 1024;
/// Default largest server-to-client frame: `mod:verify_resp` carries module
/// bytes in base64 (4/3 of the module's size).
pub const DEFAULT_SERVER_TO_CLIENT: usize = 48 * 1024 * 1024;

/// Largest frame accepted in each direction, in bytes, not counting the `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame a server reads from a client.
    pub client_to_server: usize,
    /// Largest frame a client reads from a server.
    pub server_to_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_to_server: DEFAULT_CLIENT_TO_SERVER,
            server_to_client: DEFAULT_SERVER_TO_CLIENT,
        }
    }
}

/// An error that ends the stream: the connection should be closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer sent more than the limit without a newline.
    #[error("frame exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// A frame to be sent is larger than the peer accepts.
    #[error("outgoing frame of {len} bytes exceeds the limit of {limit} bytes")]
    OutgoingTooLarge {
        /// The encoded length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Line codec for [`Frame`]s.
///
/// Decoding buffers across reads and never holds more than `max_decode`
/// bytes of one frame (plus at most one read's worth) before refusing it with
/// [`CodecError::FrameTooLarge`]. A line that is not a valid frame is
/// yielded as `Ok(Some(Err(FrameError)))`, so that one bad line does not end
/// the stream.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_decode: usize,
    max_encode: usize,
    /// Where to resume looking for `\n` in the buffer.
    scanned: usize,
}

impl FrameCodec {
    /// A codec that reads frames of at most `max_decode` bytes and writes
    /// frames of at most `max_encode` bytes.
    pub fn new(max_decode: usize, max_encode: usize) -> Self {
        FrameCodec {
            max_decode,
            max_encode,
            scanned: 0,
        }
    }

    /// The codec a server uses: reads client-to-server frames, writes
    /// server-to-client frames.
    pub fn server(limits: &Limits) -> Self {
        Self::new(limits.client_to_server, limits.server_to_client)
    }

    /// The codec a client uses: reads server-to-client frames, writes
    /// client-to-server frames.
    pub fn client(limits: &Limits) -> Self {
        Self::new(limits.server_to_client, limits.client_to_server)
    }

    /// The read limit.
    pub fn max_decode(&self) -> usize {
        self.max_decode
    }
}

impl Decoder for FrameCodec {
    type Item = Result<Frame, FrameError>;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        let start = self.scanned.min(buf.len());
        match buf[start..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let end = start + offset;
                self.scanned = 0;
                if end > self.max_decode {
                    buf.clear();
                    return Err(CodecError::FrameTooLarge {
                        limit: self.max_decode,
                    });
                }
                let line = buf.split_to(end + 1);
                Ok(Some(Frame::parse(&line[..end])))
            }
            None if buf.len() > self.max_decode => {
                buf.clear();
                self.scanned = 0;
                Err(CodecError::FrameTooLarge {
                    limit: self.max_decode,
                })
            }
            None => {
                // The reader grows the buffer as bytes arrive; an idle
                // connection keeps only what it had.
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        self.scanned = 0;
        if buf.is_empty() {
            return Ok(None);
        }
        let len = buf.len();
        buf.advance(len);
        Ok(Some(Err(FrameError::Truncated { len })))
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let bytes = frame.to_bytes();
        let len = bytes.len() - 1;
        if len > self.max_encode {
            return Err(CodecError::OutgoingTooLarge {
                len,
                limit: self.max_encode,
            });
        }
        dst.put_slice(&bytes);
        Ok(())
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&frame, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        codec: &mut FrameCodec,
        buf: &mut BytesMut,
        bytes: &[u8],
    ) -> Vec<Result<Frame, FrameError>> {
        buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(buf).expect("within limit") {
            out.push(item);
        }
        out
    }

    #[test]
    fn buffers_across_reads() {
        let mut codec = FrameCodec::new(1024, 1024);
        let mut buf = BytesMut::new();
        assert!(feed(&mut codec, &mut buf, b"mod:sy").is_empty());
        assert!(feed(&mut codec, &mut buf, b"nc:1 {").is_empty());
        let got = feed(&mut codec, &mut buf, b"}\nmod:sync:2 {}\nmod");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().expect("frame").reference(), "2");
        assert_eq!(&buf[..], b"mod");
    }

    #[test]
    fn bad_line_does_not_end_the_stream() {
        let mut codec = FrameCodec::new(1024, 1024);
        let mut buf = BytesMut::new();
        let got = feed(&mut codec, &mut buf, b"garbage\nmod:sync:1 {}\n");
        assert!(got[0].is_err());
        assert!(got[1].is_ok());
    }

    #[test]
    fn refuses_oversized_before_newline() {
        let mut codec = FrameCodec::new(16, 16);
        let mut buf = BytesMut::from(&[b'a'; 17][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::FrameTooLarge { limit: 16 })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_complete_line() {
        let mut codec = FrameCodec::new(8, 8);
        let mut buf = BytesMut::from(&b"mod:sync:1 {}\n"[..]);
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn exactly_at_the_limit_is_accepted() {
        let line = b"mod:sync:1 {}";
        let mut codec = FrameCodec::new(line.len(), 0);
        let mut buf = BytesMut::from(&line[..]);
        buf.put_u8(b'\n');
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Ok(_)))));
    }

    #[test]
    fn truncated_at_eof() {
        let mut codec = FrameCodec::new(64, 64);
        let mut buf = BytesMut::from(&b"mod:sy"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Ok(Some(Err(FrameError::Truncated { len: 6 })))
        ));
        assert!(matches!(codec.decode_eof(&mut buf), Ok(None)));
    }

    #[test]
    fn encode_respects_the_peer_limit() {
        let mut codec = FrameCodec::new(1024, 8);
        let frame = Frame::parse(b"mod:sync:1 {}").expect("frame");
        let mut dst = BytesMut::new();
        assert!(matches!(
            codec.encode(&frame, &mut dst),
            Err(CodecError::OutgoingTooLarge { .. })
        ));
    }
}
