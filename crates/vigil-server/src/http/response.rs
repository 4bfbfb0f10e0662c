//! Building answers: JSON bodies and `{"detail": ...}` errors.

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::ServerError;

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Resp {
    bytes_response(status, body.to_string().into_bytes())
}

/// A response with a JSON body already encoded.
pub(crate) fn bytes_response(status: StatusCode, body: Vec<u8>) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn error(status: StatusCode, detail: impl std::fmt::Display) -> Resp {
    json_response(status, &json!({ "detail": detail.to_string() }))
}

/// An error answer, small enough to pass around in a `Result`.
pub(crate) struct ApiError(
    pub(crate) StatusCode,
    pub(crate) String,
    pub(crate) Option<Method>,
);

impl ApiError {
    pub(crate) fn new(status: StatusCode, detail: impl std::fmt::Display) -> Self {
        ApiError(status, detail.to_string(), None)
    }

    pub(crate) fn into_response(self) -> Resp {
        let mut resp = error(self.0, self.1);
        // A 405 says which method the route takes (RFC 9110).
        if let Some(allowed) = self.2
            && let Ok(value) = hyper::header::HeaderValue::from_str(allowed.as_str())
        {
            resp.headers_mut().insert(hyper::header::ALLOW, value);
        }
        resp
    }
}

pub(crate) fn now_iso() -> String {
    vigil_command::Timestamp::from_system_time(SystemTime::now())
        .map(|t| t.isoformat())
        .unwrap_or_default()
}

pub(crate) fn server_error(e: ServerError) -> Resp {
    match e {
        ServerError::Audit(_) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        ServerError::NoAuthority => error(StatusCode::SERVICE_UNAVAILABLE, e),
        ServerError::BadCommand(_) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other),
    }
}
