//! The vigil wire protocol.
//!
//! Every frame is one UTF-8 line, `API:TYPE:REF <payload>\n`, whose payload
//! is a JSON object (`{}` when empty). The header and the payload are split
//! at the first space; the header is split on `:` at most twice, so that REF
//! may itself contain `:`. Responses echo the REF of their request, and every
//! error is an `err` frame with a code and a message.
//!
//! This crate holds the grammar ([`Frame`]), the typed messages
//! ([`ClientRequest`], [`ServerMessage`], [`ErrorBody`]) and a tokio-util
//! codec ([`FrameCodec`]) that buffers across reads and refuses a frame over
//! its size limit before buffering it. It does no I/O of its own.
//!
//! ```
//! use bytes::BytesMut;
//! use tokio_util::codec::Decoder;
//! use vigil_proto::{ClientRequest, FrameCodec, Limits};
//!
//! let mut codec = FrameCodec::server(&Limits::default());
//! let mut buf = BytesMut::from(&b"mod:verify:7 {\"mod\":\"hello.so\"}\n"[..]);
//! let frame = codec.decode(&mut buf).unwrap().unwrap().unwrap();
//! assert_eq!(frame.reference(), "7");
//! assert_eq!(
//!     ClientRequest::from_frame(&frame).unwrap(),
//!     ClientRequest::Verify { module: "hello.so".into() }
//! );
//! ```
#![deny(missing_docs)]

mod codec;
mod frame;
mod message;

pub use codec::{
    CodecError, DEFAULT_CLIENT_TO_SERVER, DEFAULT_SERVER_TO_CLIENT, FrameCodec, Limits,
};
pub use frame::{BuildError, Frame, FrameError};
pub use message::{
    Ack, AckCode, AckStatus, BreakOutcome, ClientRequest, ErrorBody, ErrorCode, FailsafeReport,
    Hello, MAX_HELLO_ID_LEN, MAX_HELLO_PATH_LEN, MessageError, ModuleInfo, NonceBody,
    ServerMessage, api, tree_path_of,
};

/// Whether `s` can be an API or TYPE token.
pub(crate) fn frame_token(s: &str) -> bool {
    frame::is_token(s)
}
