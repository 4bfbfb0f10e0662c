//! Property tests for the frame grammar and codec.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{Map, Value};
use tokio_util::codec::{Decoder, Encoder};
use vigil_proto::{ClientRequest, Frame, FrameCodec, ServerMessage};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,12}"
}

fn reference() -> impl Strategy<Value = String> {
    "[!-~]{0,24}"
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ]
}

fn payload() -> impl Strategy<Value = Map<String, Value>> {
    let value = json_leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(any::<String>(), value, 0..5).prop_map(|m| m.into_iter().collect())
}

fn frame() -> impl Strategy<Value = Frame> {
    (token(), token(), reference(), payload())
        .prop_map(|(a, t, r, p)| Frame::new(a, t, r, p).expect("strategy yields valid parts"))
}

proptest! {
    #[test]
    fn encode_decode_round_trip(frames in prop::collection::vec(frame(), 1..6), split in any::<prop::sample::Index>()) {
        let mut codec = FrameCodec::new(1 << 20, 1 << 20);
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode(f, &mut wire).expect("encode");
        }
        // Deliver the bytes in two reads split anywhere.
        let at = split.index(wire.len() + 1);
        let (first, second) = wire.split_at(at);
        let mut buf = BytesMut::from(first);
        let mut got = Vec::new();
        while let Some(item) = codec.decode(&mut buf).expect("no limit hit") {
            got.push(item.expect("valid frame"));
        }
        buf.extend_from_slice(second);
        while let Some(item) = codec.decode(&mut buf).expect("no limit hit") {
            got.push(item.expect("valid frame"));
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn no_input_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8), limit in 0usize..128) {
        let mut codec = FrameCodec::new(limit, limit);
        let mut buf = BytesMut::new();
        for chunk in chunks {
            buf.extend_from_slice(&chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(Ok(frame))) => {
                        let _ = ClientRequest::from_frame(&frame);
                        let _ = ServerMessage::from_frame(&frame);
                    }
                    Ok(Some(Err(_))) => {}
                    Ok(None) => break,
                    Err(_) => break,
                }
                // Memory stays bounded by the limit plus one chunk.
                prop_assert!(buf.len() <= limit + 64);
            }
        }
        let _ = codec.decode_eof(&mut buf);
    }

    #[test]
    fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(frame) = Frame::parse(&line) {
            // Anything that parses re-encodes to something that parses the same.
            let bytes = frame.to_bytes();
            prop_assert_eq!(Frame::parse(&bytes[..bytes.len() - 1]).expect("reparse"), frame);
        }
    }

    #[test]
    fn text_like_lines_never_panic(line in "[a-z:{}\" \\[\\]0-9,]{0,64}") {
        if let Ok(frame) = Frame::parse(line.as_bytes()) {
            let _ = ClientRequest::from_frame(&frame);
            let _ = ServerMessage::from_frame(&frame);
        }
    }
}
