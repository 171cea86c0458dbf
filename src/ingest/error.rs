//! Firehose API errors: `{"__type": ..., "message": ...}` with the status SDKs expect.

use hyper::StatusCode;

/// An error answer of the Direct PUT API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The `__type` of an error, as AWS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named delivery stream does not exist.
    ResourceNotFound,
    /// A parameter breaks a limit or a pattern.
    InvalidArgument,
    /// The body is not valid AWS JSON 1.1 for the operation (bad JSON, base64 or types).
    Serialization,
    /// `X-Amz-Target` is missing or names no operation.
    UnknownOperation,
    /// The client sent the body too slowly. HTTP 408.
    RequestTimeout,
    /// Back off and retry: overloaded or shutting down. HTTP 503, so SDKs retry.
    ServiceUnavailable,
    /// An unexpected server fault.
    InternalFailure,
}

impl ErrorKind {
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::ResourceNotFound => "ResourceNotFoundException",
            ErrorKind::InvalidArgument => "InvalidArgumentException",
            ErrorKind::Serialization => "SerializationException",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::RequestTimeout => "RequestTimeoutException",
            ErrorKind::ServiceUnavailable => "ServiceUnavailableException",
            ErrorKind::InternalFailure => "InternalFailure",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::InternalFailure => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"__type": self.kind.type_name(), "message": self.message}).to_string()
    }

    /// AWS's wording for a constraint violation on one member.
    pub fn validation(member: &str, constraint: &str) -> ApiError {
        ApiError::new(
            ErrorKind::InvalidArgument,
            format!("1 validation error detected: Value at '{member}' failed to satisfy constraint: {constraint}"),
        )
    }
}
