//! What the server sends ([`ServerMessage`], [`ModuleInfo`]), its encoding
//! and parsing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ErrorBody, ErrorCode, MessageError, ModRef, api, object_of, payload_of};
use crate::Frame;

/// What the server says about one loaded module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// File name of the module in the server's mods directory.
    #[serde(rename = "mod")]
    pub name: String,
    /// Lowercase hex SHA-256 of the exact bytes the server loaded.
    pub sum: String,
    /// Size of those bytes.
    pub size: u64,
    /// The module's own description.
    #[serde(default)]
    pub desc: String,
    /// The module's signed manifest (a JSON object, checked by the client
    /// with `vigil-command`), when the server has one; left out of the
    /// frame otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Map<String, Value>>,
    /// `"failing"` in `mod:sync_resp` for a module whose host process
    /// failed repeatedly within the last minute; left out otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SyncBody {
    modules: Vec<ModuleInfo>,
}

#[derive(Serialize, Deserialize)]
struct VerifyBody {
    #[serde(rename = "mod")]
    name: String,
    content: String,
    encoding: String,
    sum: String,
    #[serde(default)]
    desc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest: Option<Map<String, Value>>,
}

#[derive(Serialize, Deserialize)]
struct ExecRespBody {
    #[serde(rename = "mod")]
    name: String,
    sum: String,
    result: String,
}

/// A message from the server to a client: a response or a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// `mod:sync_resp`: the loaded modules.
    SyncResp {
        /// One entry per module.
        modules: Vec<ModuleInfo>,
    },
    /// `mod:verify_resp`: the exact bytes of a module.
    VerifyResp {
        /// Module file name.
        module: String,
        /// The bytes the server loaded (base64 on the wire).
        content: Vec<u8>,
        /// SHA-256 (hex) of `content` as the server computed it.
        sum: String,
        /// The module's description.
        desc: String,
        /// The module's signed manifest, if the server has one.
        manifest: Option<Map<String, Value>>,
    },
    /// `mod:exec_resp`: what a module returned.
    ExecResp {
        /// Module file name.
        module: String,
        /// SHA-256 (hex) of the module that ran.
        sum: String,
        /// The module's result.
        result: String,
    },
    /// `modload:modload`: a new module was loaded.
    ModLoad(ModuleInfo),
    /// `modreload:modreload`: a module changed and was loaded again.
    ModReload(ModuleInfo),
    /// `modunload:modunload`: a module was removed.
    ModUnload {
        /// Module file name.
        module: String,
    },
    /// `sys:pong`: answer to `sys:ping`.
    Pong,
    /// `sys:hello_ok`: answer to `sys:hello`.
    HelloOk,
    /// `cmd:exec`: a signed command (the payload is the signed command's
    /// JSON object, checked by the client with `vigil-command`).
    Command(Map<String, Value>),
    /// `hb:beat`: a signed heartbeat (checked by the client).
    Heartbeat(Map<String, Value>),
    /// `fs:report_ok`: a failsafe report was received (and recorded).
    ReportOk,
    /// `err:<code>`: the request failed.
    Error(ErrorBody),
}

impl ServerMessage {
    /// The frame for this message.
    pub fn to_frame(&self, reference: &str) -> Frame {
        let (api, kind, payload) = match self {
            ServerMessage::SyncResp { modules } => (
                api::MOD,
                "sync_resp",
                object_of(&SyncBody {
                    modules: modules.clone(),
                }),
            ),
            ServerMessage::VerifyResp {
                module,
                content,
                sum,
                desc,
                manifest,
            } => (
                api::MOD,
                "verify_resp",
                object_of(&VerifyBody {
                    name: module.clone(),
                    content: BASE64.encode(content),
                    encoding: "base64".into(),
                    sum: sum.clone(),
                    desc: desc.clone(),
                    manifest: manifest.clone(),
                }),
            ),
            ServerMessage::ExecResp {
                module,
                sum,
                result,
            } => (
                api::MOD,
                "exec_resp",
                object_of(&ExecRespBody {
                    name: module.clone(),
                    sum: sum.clone(),
                    result: result.clone(),
                }),
            ),
            ServerMessage::ModLoad(info) => (api::MODLOAD, "modload", object_of(info)),
            ServerMessage::ModReload(info) => (api::MODRELOAD, "modreload", object_of(info)),
            ServerMessage::ModUnload { module } => (
                api::MODUNLOAD,
                "modunload",
                object_of(&ModRef {
                    name: module.clone(),
                }),
            ),
            ServerMessage::Pong => (api::SYS, "pong", Map::new()),
            ServerMessage::HelloOk => (api::SYS, "hello_ok", Map::new()),
            ServerMessage::Command(body) => (api::CMD, "exec", body.clone()),
            ServerMessage::Heartbeat(body) => (api::HB, "beat", body.clone()),
            ServerMessage::ReportOk => (api::FS, "report_ok", Map::new()),
            ServerMessage::Error(body) => return body.to_frame(reference),
        };
        Frame::from_static(api, kind, reference, payload)
    }

    /// Reads a server message from a frame.
    pub fn from_frame(frame: &Frame) -> Result<ServerMessage, MessageError> {
        let unknown_type = || MessageError::UnknownType {
            api: frame.api().to_owned(),
            kind: frame.kind().to_owned(),
        };
        match (frame.api(), frame.kind()) {
            (api::MOD, "sync_resp") => {
                let b: SyncBody = payload_of(frame)?;
                Ok(ServerMessage::SyncResp { modules: b.modules })
            }
            (api::MOD, "verify_resp") => {
                let b: VerifyBody = payload_of(frame)?;
                let bad = |detail: String| MessageError::BadPayload {
                    header: "mod:verify_resp".into(),
                    detail,
                };
                if b.encoding != "base64" {
                    return Err(bad(format!("unsupported encoding {:?}", b.encoding)));
                }
                let content = BASE64
                    .decode(b.content.as_bytes())
                    .map_err(|e| bad(format!("content is not base64: {e}")))?;
                Ok(ServerMessage::VerifyResp {
                    module: b.name,
                    content,
                    sum: b.sum,
                    desc: b.desc,
                    manifest: b.manifest,
                })
            }
            (api::MOD, "exec_resp") => {
                let b: ExecRespBody = payload_of(frame)?;
                Ok(ServerMessage::ExecResp {
                    module: b.name,
                    sum: b.sum,
                    result: b.result,
                })
            }
            (api::MOD, _) => Err(unknown_type()),
            (api::MODLOAD, "modload") => Ok(ServerMessage::ModLoad(payload_of(frame)?)),
            (api::MODRELOAD, "modreload") => Ok(ServerMessage::ModReload(payload_of(frame)?)),
            (api::MODUNLOAD, "modunload") => {
                let b: ModRef = payload_of(frame)?;
                Ok(ServerMessage::ModUnload { module: b.name })
            }
            (api::MODLOAD | api::MODRELOAD | api::MODUNLOAD, _) => Err(unknown_type()),
            (api::SYS, "pong") => Ok(ServerMessage::Pong),
            (api::SYS, "hello_ok") => Ok(ServerMessage::HelloOk),
            (api::SYS, _) => Err(unknown_type()),
            (api::CMD, "exec") => Ok(ServerMessage::Command(frame.payload().clone())),
            (api::HB, "beat") => Ok(ServerMessage::Heartbeat(frame.payload().clone())),
            (api::CMD | api::HB, _) => Err(unknown_type()),
            (api::FS, "report_ok") => Ok(ServerMessage::ReportOk),
            (api::FS, _) => Err(unknown_type()),
            (api::ERR, kind) => {
                let code = frame
                    .payload()
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or(kind);
                let message = frame
                    .payload()
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let signal = frame
                    .payload()
                    .get("signal")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                Ok(ServerMessage::Error(
                    ErrorBody::new(ErrorCode::parse(code), message).with_signal(signal),
                ))
            }
            (other, _) => Err(MessageError::UnknownApi(other.to_owned())),
        }
    }

    /// Whether the server sent this on its own (a broadcast, a command, a
    /// heartbeat) rather than in answer to a request.
    pub fn is_broadcast(&self) -> bool {
        matches!(
            self,
            ServerMessage::ModLoad(_)
                | ServerMessage::ModReload(_)
                | ServerMessage::ModUnload { .. }
                | ServerMessage::Command(_)
                | ServerMessage::Heartbeat(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_server(msg: ServerMessage) {
        let frame = msg.to_frame("r1");
        let bytes = frame.to_bytes();
        let parsed = Frame::parse(&bytes[..bytes.len() - 1]).expect("parse");
        assert_eq!(ServerMessage::from_frame(&parsed).expect("message"), msg);
    }

    #[test]
    fn server_messages_round_trip() {
        let info = ModuleInfo {
            name: "hello.so".into(),
            sum: "ab".repeat(32),
            size: 12,
            desc: "says hello".into(),
            manifest: None,
            state: None,
        };
        let mut manifest = Map::new();
        manifest.insert("format".into(), Value::String("x".into()));
        let signed = ModuleInfo {
            manifest: Some(manifest.clone()),
            ..info.clone()
        };
        round_trip_server(ServerMessage::SyncResp {
            modules: vec![info.clone()],
        });
        round_trip_server(ServerMessage::VerifyResp {
            module: "hello.so".into(),
            content: vec![0, 1, 2, 255],
            sum: "cd".repeat(32),
            desc: String::new(),
            manifest: None,
        });
        round_trip_server(ServerMessage::VerifyResp {
            module: "hello.so".into(),
            content: vec![3],
            sum: "cd".repeat(32),
            desc: String::new(),
            manifest: Some(manifest),
        });
        round_trip_server(ServerMessage::ModLoad(signed.clone()));
        round_trip_server(ServerMessage::SyncResp {
            modules: vec![signed],
        });
        round_trip_server(ServerMessage::ModLoad(info.clone()));
        round_trip_server(ServerMessage::ModReload(info));
        round_trip_server(ServerMessage::ModUnload {
            module: "x.so".into(),
        });
        round_trip_server(ServerMessage::Pong);
        let mut body = Map::new();
        body.insert("command_id".into(), Value::String("c1".into()));
        round_trip_server(ServerMessage::Command(body.clone()));
        round_trip_server(ServerMessage::Heartbeat(body));
        round_trip_server(ServerMessage::Error(
            ErrorBody::new(ErrorCode::ModuleCrashed, "module crashed: SIGSEGV")
                .with_signal(Some("SIGSEGV".into())),
        ));
        round_trip_server(ServerMessage::Error(ErrorBody::new(
            ErrorCode::UnknownModule,
            "no module \"x\"",
        )));
    }

    #[test]
    fn without_a_manifest_the_frames_are_the_seeds() {
        let info = ModuleInfo {
            name: "hello.so".into(),
            sum: "ab".repeat(32),
            size: 12,
            desc: "d".into(),
            manifest: None,
            state: None,
        };
        let frame = ServerMessage::ModLoad(info).to_frame("m1").to_bytes();
        let text = String::from_utf8(frame).unwrap_or_default();
        assert!(!text.contains("manifest"), "{text}");
        assert!(text.starts_with("modload:modload:m1 {"), "{text}");
    }
}
