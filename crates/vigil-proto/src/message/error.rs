//! Error codes, the body of `err` frames, and why a frame is not a message.

use std::fmt;

use serde_json::{Map, Value};

use super::api;
use crate::Frame;

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
    /// The module's host process died during the run (the message names
    /// the signal or exit status); the module is started again.
    ModuleCrashed,
    /// The run went past a limit of the module's sandbox (memory).
    ModuleLimit,
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
            ErrorCode::ModuleCrashed => "module_crashed",
            ErrorCode::ModuleLimit => "module_limit",
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
            "module_crashed" => ErrorCode::ModuleCrashed,
            "module_limit" => ErrorCode::ModuleLimit,
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
    /// For `module_crashed`: the signal that ended the module's host, by
    /// name (`SIGSEGV`), when a signal did; sent as the payload's `signal`.
    pub signal: Option<String>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            signal: None,
        }
    }

    /// This error, naming the signal that ended a module's host.
    pub fn with_signal(mut self, signal: Option<String>) -> Self {
        self.signal = signal;
        self
    }

    /// The `err:<code>:<ref>` frame for this error.
    pub fn to_frame(&self, reference: &str) -> Frame {
        let mut payload = Map::new();
        payload.insert("code".into(), Value::String(self.code.as_str().into()));
        payload.insert("message".into(), Value::String(self.message.clone()));
        if let Some(signal) = &self.signal {
            payload.insert("signal".into(), Value::String(signal.clone()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerMessage;

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
