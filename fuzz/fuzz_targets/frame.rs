//! The frame codec and the message layer on arbitrary bytes, cut into reads
//! of every size: no panic, the buffer stays within the limit, and every
//! frame that parses encodes back to itself.
//!
//! `cargo fuzz run frame --sanitizer none` (or `just fuzz frame`).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder as _;
use vigil_proto::{ClientRequest, Frame, FrameCodec, FrameError, Limits, ServerMessage};

/// Small limits, so that inputs reach them.
const LIMITS: Limits = Limits {
    client_to_server: 512,
    server_to_client: 4096,
};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size of each read.
    let Some((step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(*step % 64) + 1;
    for (mut codec, max) in [
        (FrameCodec::server(&LIMITS), LIMITS.client_to_server),
        (FrameCodec::client(&LIMITS), LIMITS.server_to_client),
    ] {
        let mut buf = BytesMut::new();
        for read in data.chunks(step) {
            buf.extend_from_slice(read);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(item)) => check(item),
                    Ok(None) => {
                        assert!(buf.len() <= max, "{} bytes buffered", buf.len());
                        break;
                    }
                    // Oversized: the connection closes; the buffer is dropped.
                    Err(_) => {
                        assert!(buf.is_empty());
                        break;
                    }
                }
            }
        }
        if let Ok(Some(item)) = codec.decode_eof(&mut buf) {
            check(item);
        }
    }
    if let Ok(frame) = Frame::parse(data) {
        roundtrip(&frame);
    }
});

fn check(item: Result<Frame, FrameError>) {
    match item {
        Ok(frame) => roundtrip(&frame),
        // Every error names a code for its `err` frame.
        Err(e) => {
            let _ = (e.code(), e.reference(), e.to_string());
        }
    }
}

fn roundtrip(frame: &Frame) {
    let bytes = frame.to_bytes();
    let line = bytes.strip_suffix(b"\n").expect("a frame ends with a newline");
    assert!(!line.contains(&b'\n'), "an encoded frame is one line");
    let again = Frame::parse(line).expect("an encoded frame parses");
    assert_eq!(&again, frame);
    if let Ok(request) = ClientRequest::from_frame(frame) {
        let back = ClientRequest::from_frame(&request.to_frame(frame.reference()));
        assert_eq!(back.as_ref(), Ok(&request));
    }
    if let Ok(message) = ServerMessage::from_frame(frame) {
        let back = ServerMessage::from_frame(&message.to_frame(frame.reference()));
        assert_eq!(back.as_ref(), Ok(&message));
    }
}
