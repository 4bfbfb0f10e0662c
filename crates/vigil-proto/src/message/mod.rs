//! Typed messages carried by frames.
//!
//! What a client sends is in `client`, what the server sends in
//! `server`; the bodies of acks, failsafe reports and hellos, and the
//! error codes and bodies, each have a module of their own.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Frame;

mod ack;
mod client;
mod error;
mod hello;
mod server;

pub use ack::{Ack, AckCode, AckStatus, BreakOutcome, FailsafeReport};
pub use client::{ClientRequest, NonceBody};
pub use error::{ErrorBody, ErrorCode, MessageError};
pub use hello::{Hello, MAX_HELLO_ID_LEN, MAX_HELLO_PATH_LEN, tree_path_of};
pub use server::{ModuleInfo, ServerMessage};

/// API names used by vigil.
pub mod api {
    /// Module family: sync, verify, exec and their responses.
    pub const MOD: &str = "mod";
    /// Broadcast: a module was loaded.
    pub const MODLOAD: &str = "modload";
    /// Broadcast: a module was reloaded.
    pub const MODRELOAD: &str = "modreload";
    /// Broadcast: a module was unloaded.
    pub const MODUNLOAD: &str = "modunload";
    /// Connection upkeep: ping and pong.
    pub const SYS: &str = "sys";
    /// Errors: `err:<code>:<ref> {"code": ..., "message": ...}`.
    pub const ERR: &str = "err";
    /// Signed commands (`cmd:exec`, server to client) and their
    /// acknowledgements (`cmd:ack`, client to server).
    pub const CMD: &str = "cmd";
    /// Signed heartbeats (`hb:beat`, server to client).
    pub const HB: &str = "hb";
    /// Failsafe reports (`fs:report`, client to server).
    pub const FS: &str = "fs";
}

fn payload_of<T: DeserializeOwned>(frame: &Frame) -> Result<T, MessageError> {
    T::deserialize(Value::Object(frame.payload().clone())).map_err(|e| MessageError::BadPayload {
        header: format!("{}:{}", frame.api(), frame.kind()),
        detail: e.to_string(),
    })
}

fn object_of<T: Serialize>(value: &T) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        // Every type passed here is a struct with string keys.
        _ => Map::new(),
    }
}

#[derive(Serialize, Deserialize)]
struct ModRef {
    #[serde(rename = "mod")]
    name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_match_the_seed() {
        let f = ClientRequest::Verify {
            module: "hello.so".into(),
        }
        .to_frame("7");
        assert_eq!(f.to_bytes(), b"mod:verify:7 {\"mod\":\"hello.so\"}\n");
        let f = ClientRequest::Sync.to_frame("1");
        assert_eq!(f.to_bytes(), b"mod:sync:1 {}\n");
        let f = ServerMessage::ModUnload {
            module: "a.so".into(),
        }
        .to_frame("b");
        assert_eq!(f.to_bytes(), b"modunload:modunload:b {\"mod\":\"a.so\"}\n");
        let f = ServerMessage::Error(ErrorBody::new(ErrorCode::UnknownApi, "no")).to_frame("q");
        assert_eq!(
            f.to_bytes(),
            b"err:unknown_api:q {\"code\":\"unknown_api\",\"message\":\"no\"}\n"
        );
    }
}
