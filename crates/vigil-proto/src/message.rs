//! Typed messages carried by frames.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Frame;

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

/// How a client answered a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Verified and run; `result` holds what the handler returned.
    Done,
    /// Verified, run, and the handler failed; `detail` says how.
    Failed,
    /// Not run: the command failed verification; `code` and `detail` say why.
    Refused,
}

/// The body of `cmd:ack:<ref>`: a client's answer to `cmd:exec:<ref>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The command's id (`null` if the command could not be parsed).
    pub command_id: Option<String>,
    /// What happened.
    pub status: AckStatus,
    /// A machine-readable reason for a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A reason or error, for a person.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// What the handler returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// The body of `fs:report:<ref>`: a failsafe transition, reported by a
/// client once it can reach the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeReport {
    /// `fired` or `rearmed`.
    pub event: String,
    /// When it happened (RFC 3339, from the client's clock).
    pub at: String,
    /// How long no verified message had arrived (fired), or how long the
    /// outage lasted (rearmed), in milliseconds.
    pub silent_ms: u64,
    /// The break commands run when it fired, with their outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub break_commands: Vec<BreakOutcome>,
}

/// The body of `sys:hello:<ref>`: where a client stands, so that the
/// server can route commands aimed at an agent id or a subtree to it. The
/// server answers `sys:hello_ok`. It is a routing hint only: the client
/// itself checks every command's `target_agent_id` and `target_tree_path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The agent id the client checks `target_agent_id` against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Its place in the agent tree, root first (CIRIS `target_tree_path`
    /// semantics: a command scoped to a path reaches the agents at it and
    /// below). Empty: no place, so no scoped command is for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tree_path: Vec<String>,
}

/// Longest `agent_id` or tree path entry in a [`Hello`], in bytes (as in
/// signed commands).
pub const MAX_HELLO_ID_LEN: usize = 256;
/// Most entries in a [`Hello`]'s tree path (as in signed commands).
pub const MAX_HELLO_PATH_LEN: usize = 64;

/// A tree path from `--tree-path` text (entries separated by `/`, root
/// first) or from a config file's list, checked as [`Hello::problem`]
/// checks one: what a program reads before it says hello.
pub fn tree_path_of(
    text: Option<&str>,
    list: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, String> {
    let path = match text {
        Some(text) => Some(
            text.split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ),
        None => list,
    };
    if let Some(path) = &path {
        if path.is_empty() {
            return Err("tree_path is empty: leave it out for no place in the tree".into());
        }
        let hello = Hello {
            agent_id: None,
            tree_path: path.clone(),
        };
        if let Some(problem) = hello.problem() {
            return Err(format!("tree_path: {problem}"));
        }
    }
    Ok(path)
}

impl Hello {
    /// Why this hello is refused, if it is: an id or a path entry empty or
    /// past [`MAX_HELLO_ID_LEN`], or more than [`MAX_HELLO_PATH_LEN`] entries.
    pub fn problem(&self) -> Option<String> {
        if let Some(id) = &self.agent_id
            && (id.is_empty() || id.len() > MAX_HELLO_ID_LEN)
        {
            return Some(format!("agent_id must be 1 to {MAX_HELLO_ID_LEN} bytes"));
        }
        if self.tree_path.len() > MAX_HELLO_PATH_LEN {
            return Some(format!(
                "tree_path has more than {MAX_HELLO_PATH_LEN} entries"
            ));
        }
        if self
            .tree_path
            .iter()
            .any(|p| p.is_empty() || p.len() > MAX_HELLO_ID_LEN)
        {
            return Some(format!(
                "tree_path entries must be 1 to {MAX_HELLO_ID_LEN} bytes"
            ));
        }
        None
    }
}

/// One break command's outcome in a [`FailsafeReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakOutcome {
    /// The command.
    pub command: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its result or error.
    pub detail: String,
}

/// A machine-readable error code, sent as the TYPE of an `err` frame and as
/// its payload's `code`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame exceeded the size limit; the connection is closed after it.
    FrameTooLarge,
    /// The frame is not valid UTF-8.
    InvalidUtf8,
    /// The header is not `API:TYPE:REF`.
    BadHeader,
    /// The payload is not a JSON object.
    BadJson,
    /// The API is not one this peer serves.
    UnknownApi,
    /// The API is known but the TYPE is not.
    UnknownType,
    /// The payload lacks a field or has one of the wrong type.
    BadPayload,
    /// No module of that name is loaded.
    UnknownModule,
    /// The module changed since the client verified it: verify again.
    StaleSum,
    /// The module ran and failed (returned an error or panicked).
    ExecFailed,
    /// The module did not return within the server's time limit.
    ExecTimeout,
    /// The server is at a limit; try again later.
    Busy,
    /// The server failed in a way that is not the request's fault.
    Internal,
    /// A code this version does not know.
    Other(String),
}

impl ErrorCode {
    /// The wire form of the code.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::BadHeader => "bad_header",
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownApi => "unknown_api",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadPayload => "bad_payload",
            ErrorCode::UnknownModule => "unknown_module",
            ErrorCode::StaleSum => "stale_sum",
            ErrorCode::ExecFailed => "exec_failed",
            ErrorCode::ExecTimeout => "exec_timeout",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(s) => s,
        }
    }

    /// Reads the wire form; unknown codes become [`ErrorCode::Other`].
    pub fn parse(s: &str) -> ErrorCode {
        match s {
            "frame_too_large" => ErrorCode::FrameTooLarge,
            "invalid_utf8" => ErrorCode::InvalidUtf8,
            "bad_header" => ErrorCode::BadHeader,
            "bad_json" => ErrorCode::BadJson,
            "unknown_api" => ErrorCode::UnknownApi,
            "unknown_type" => ErrorCode::UnknownType,
            "bad_payload" => ErrorCode::BadPayload,
            "unknown_module" => ErrorCode::UnknownModule,
            "stale_sum" => ErrorCode::StaleSum,
            "exec_failed" => ErrorCode::ExecFailed,
            "exec_timeout" => ErrorCode::ExecTimeout,
            "busy" => ErrorCode::Busy,
            "internal" => ErrorCode::Internal,
            other => ErrorCode::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of an `err` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// What kind of error.
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }

    /// The `err:<code>:<ref>` frame for this error.
    pub fn to_frame(&self, reference: &str) -> Frame {
        let mut payload = Map::new();
        payload.insert("code".into(), Value::String(self.code.as_str().into()));
        payload.insert("message".into(), Value::String(self.message.clone()));
        let code = self.code.as_str();
        // Error codes are tokens; an `Other` code from an embedder that is
        // not one travels in the payload only.
        let kind = if crate::frame_token(code) {
            code.to_owned()
        } else {
            "error".to_owned()
        };
        Frame::new(api::ERR, kind, reference, payload)
            .unwrap_or_else(|_| Frame::from_static(api::ERR, "error", reference, Map::new()))
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

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
}

/// Why a well-formed frame is not a message this side understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Unknown API.
    #[error("unknown API {0:?}")]
    UnknownApi(String),
    /// Known API, unknown TYPE.
    #[error("unknown TYPE {kind:?} for API {api:?}")]
    UnknownType {
        /// The API.
        api: String,
        /// The TYPE.
        kind: String,
    },
    /// Payload fields missing or of the wrong type.
    #[error("bad payload for {header}: {detail}")]
    BadPayload {
        /// `api:type` of the frame.
        header: String,
        /// What is wrong.
        detail: String,
    },
}

impl MessageError {
    /// The error code to send back.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            MessageError::UnknownApi(_) => ErrorCode::UnknownApi,
            MessageError::UnknownType { .. } => ErrorCode::UnknownType,
            MessageError::BadPayload { .. } => ErrorCode::BadPayload,
        }
    }

    /// The error as an `err` body.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }
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

#[derive(Serialize, Deserialize)]
struct ExecBody {
    #[serde(rename = "mod")]
    name: String,
    #[serde(default)]
    args: String,
    sum: String,
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
}

#[derive(Serialize, Deserialize)]
struct ExecRespBody {
    #[serde(rename = "mod")]
    name: String,
    sum: String,
    result: String,
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
            other => Err(MessageError::UnknownApi(other.to_owned())),
        }
    }
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
            } => (
                api::MOD,
                "verify_resp",
                object_of(&VerifyBody {
                    name: module.clone(),
                    content: BASE64.encode(content),
                    encoding: "base64".into(),
                    sum: sum.clone(),
                    desc: desc.clone(),
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
                Ok(ServerMessage::Error(ErrorBody::new(
                    ErrorCode::parse(code),
                    message,
                )))
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
        };
        round_trip_server(ServerMessage::SyncResp {
            modules: vec![info.clone()],
        });
        round_trip_server(ServerMessage::VerifyResp {
            module: "hello.so".into(),
            content: vec![0, 1, 2, 255],
            sum: "cd".repeat(32),
            desc: String::new(),
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
        round_trip_server(ServerMessage::Error(ErrorBody::new(
            ErrorCode::UnknownModule,
            "no module \"x\"",
        )));
    }

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
    }

    #[test]
    fn acks_and_reports_round_trip() {
        let ack = ClientRequest::Ack(Ack {
            command_id: Some("c-1".into()),
            status: AckStatus::Refused,
            code: Some("invalid_signature".into()),
            detail: "Invalid signature".into(),
            result: None,
        });
        let frame = ack.to_frame("d7");
        let bytes = frame.to_bytes();
        assert_eq!(
            bytes,
            b"cmd:ack:d7 {\"code\":\"invalid_signature\",\"command_id\":\"c-1\",\"detail\":\"Invalid signature\",\"status\":\"refused\"}\n"
        );
        let parsed = Frame::parse(&bytes[..bytes.len() - 1]).expect("frame");
        assert_eq!(ClientRequest::from_frame(&parsed).expect("ack"), ack);
        let report = ClientRequest::FailsafeReport(FailsafeReport {
            event: "fired".into(),
            at: "2026-01-01T00:00:00Z".into(),
            silent_ms: 15_000,
            break_commands: vec![BreakOutcome {
                command: "lock".into(),
                ok: true,
                detail: String::new(),
            }],
        });
        let frame = report.to_frame("r1");
        assert_eq!(ClientRequest::from_frame(&frame).expect("report"), report);
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

    #[test]
    fn unknown_error_codes_survive() {
        let frame =
            Frame::parse(br#"err:teapot:1 {"code":"teapot","message":"short"}"#).expect("frame");
        let ServerMessage::Error(body) = ServerMessage::from_frame(&frame).expect("msg") else {
            panic!("not an error");
        };
        assert_eq!(body.code, ErrorCode::Other("teapot".into()));
    }
}
