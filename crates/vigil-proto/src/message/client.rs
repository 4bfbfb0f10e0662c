//! What a client sends ([`ClientRequest`]) and how it is read from a frame.

use serde::{Deserialize, Serialize};
use serde_json::Map;

use super::{Ack, FailsafeReport, Hello, MessageError, ModRef, api, object_of, payload_of};
use crate::Frame;

#[derive(Serialize, Deserialize)]
struct ExecBody {
    #[serde(rename = "mod")]
    name: String,
    #[serde(default)]
    args: String,
    sum: String,
}

/// A request from a client to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientRequest {
    /// `mod:sync`: list the loaded modules.
    Sync,
    /// `mod:verify`: send the bytes of a module.
    Verify {
        /// Module file name.
        module: String,
    },
    /// `mod:exec`: run a module the client verified.
    Exec {
        /// Module file name.
        module: String,
        /// Argument string given to the module.
        args: String,
        /// SHA-256 (hex) of the bytes the client verified.
        sum: String,
    },
    /// `sys:ping`: keep the connection alive; answered by `sys:pong`.
    Ping,
    /// `sys:hello`: where this client stands (agent id, tree path), for
    /// routing; answered by `sys:hello_ok`.
    Hello(Hello),
    /// `cmd:ack`: the answer to a `cmd:exec` with the same REF. Not answered.
    Ack(Ack),
    /// `fs:report`: a failsafe transition. Not answered.
    FailsafeReport(FailsafeReport),
    /// `hb:nonce`: a fresh nonce for the next heartbeat to cover. Not
    /// answered (the next `hb:beat` is the answer).
    Nonce(NonceBody),
}

/// The payload of `hb:nonce`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceBody {
    /// Base64 of 32 random bytes.
    pub nonce: String,
    /// The client's last measured clock offset from the server (server
    /// minus client, milliseconds), once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_ms: Option<i64>,
}

impl ClientRequest {
    /// The frame for this request.
    pub fn to_frame(&self, reference: &str) -> Frame {
        let (api, kind, payload) = match self {
            ClientRequest::Sync => (api::MOD, "sync", Map::new()),
            ClientRequest::Verify { module } => (
                api::MOD,
                "verify",
                object_of(&ModRef {
                    name: module.clone(),
                }),
            ),
            ClientRequest::Exec { module, args, sum } => (
                api::MOD,
                "exec",
                object_of(&ExecBody {
                    name: module.clone(),
                    args: args.clone(),
                    sum: sum.clone(),
                }),
            ),
            ClientRequest::Ping => (api::SYS, "ping", Map::new()),
            ClientRequest::Hello(hello) => (api::SYS, "hello", object_of(hello)),
            ClientRequest::Ack(ack) => (api::CMD, "ack", object_of(ack)),
            ClientRequest::FailsafeReport(r) => (api::FS, "report", object_of(r)),
            ClientRequest::Nonce(n) => (api::HB, "nonce", object_of(n)),
        };
        Frame::from_static(api, kind, reference, payload)
    }

    /// Reads a request from a frame.
    pub fn from_frame(frame: &Frame) -> Result<ClientRequest, MessageError> {
        let unknown_type = || MessageError::UnknownType {
            api: frame.api().to_owned(),
            kind: frame.kind().to_owned(),
        };
        match frame.api() {
            api::MOD => match frame.kind() {
                "sync" => Ok(ClientRequest::Sync),
                "verify" => {
                    let b: ModRef = payload_of(frame)?;
                    Ok(ClientRequest::Verify { module: b.name })
                }
                "exec" => {
                    let b: ExecBody = payload_of(frame)?;
                    Ok(ClientRequest::Exec {
                        module: b.name,
                        args: b.args,
                        sum: b.sum,
                    })
                }
                _ => Err(unknown_type()),
            },
            api::SYS => match frame.kind() {
                "ping" => Ok(ClientRequest::Ping),
                "hello" => Ok(ClientRequest::Hello(payload_of(frame)?)),
                _ => Err(unknown_type()),
            },
            api::CMD => match frame.kind() {
                "ack" => Ok(ClientRequest::Ack(payload_of(frame)?)),
                _ => Err(unknown_type()),
            },
            api::FS => match frame.kind() {
                "report" => Ok(ClientRequest::FailsafeReport(payload_of(frame)?)),
                _ => Err(unknown_type()),
            },
            api::HB => match frame.kind() {
                "nonce" => Ok(ClientRequest::Nonce(payload_of(frame)?)),
                _ => Err(unknown_type()),
            },
            other => Err(MessageError::UnknownApi(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn requests_are_checked() {
        let check = |line: &str, code: ErrorCode| {
            let frame = Frame::parse(line.as_bytes()).expect("frame");
            let err = ClientRequest::from_frame(&frame).expect_err(line);
            assert_eq!(err.code(), code, "{line}: {err}");
        };
        check("foo:sync:1 {}", ErrorCode::UnknownApi);
        check("mod:nope:1 {}", ErrorCode::UnknownType);
        check("mod:verify:1 {}", ErrorCode::BadPayload);
        check("mod:verify:1 {\"mod\":3}", ErrorCode::BadPayload);
        check("mod:exec:1 {\"mod\":\"a\"}", ErrorCode::BadPayload);
        check("hb:nonce:1 {}", ErrorCode::BadPayload);
        check(
            "hb:nonce:1 {\"nonce\":\"AA==\",\"x\":1}",
            ErrorCode::BadPayload,
        );
        check("hb:beat:1 {}", ErrorCode::UnknownType);
    }

    #[test]
    fn exec_args_default_to_empty() {
        let frame = Frame::parse(br#"mod:exec:1 {"mod":"a.so","sum":"00"}"#).expect("frame");
        assert_eq!(
            ClientRequest::from_frame(&frame).expect("request"),
            ClientRequest::Exec {
                module: "a.so".into(),
                args: String::new(),
                sum: "00".into()
            }
        );
    }
}
