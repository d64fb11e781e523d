//! The single place where errors become HTTP statuses and V2 error bodies (`{"error": "..."}`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// An error as the client sees it: a status, a message that names the problem, and an optional retry hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1) on 429/503.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn with_retry_after(mut self, after: Duration) -> ApiError {
        self.retry_after = Some(after);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().clamp(1.0, 86_400.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    /// The gRPC status for each HTTP status Sluice produces; the message is the same text.
    fn from(err: ApiError) -> tonic::Status {
        use tonic::Code;
        let code = match err.status {
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::InvalidArgument,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
            StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
            StatusCode::BAD_GATEWAY => Code::Unavailable,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
            StatusCode::METHOD_NOT_ALLOWED => Code::Unimplemented,
            _ => Code::Internal,
        };
        tonic::Status::new(code, err.message)
    }
}

impl From<crate::protocol::decode::DecodeError> for ApiError {
    fn from(err: crate::protocol::decode::DecodeError) -> ApiError {
        ApiError::bad_request(err.to_string())
    }
}

impl From<crate::repository::LookupError> for ApiError {
    fn from(err: crate::repository::LookupError) -> ApiError {
        use crate::repository::LookupError;
        let status = match err {
            LookupError::UnknownModel(_) | LookupError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            LookupError::BadVersion(_) => StatusCode::BAD_REQUEST,
            LookupError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, err.to_string())
    }
}

impl From<crate::backend::signature::ValidationError> for ApiError {
    fn from(err: crate::backend::signature::ValidationError) -> ApiError {
        ApiError::bad_request(err.to_string())
    }
}

impl From<crate::scheduler::ScheduleError> for ApiError {
    fn from(err: crate::scheduler::ScheduleError) -> ApiError {
        use crate::scheduler::ScheduleError;
        match &err {
            ScheduleError::QueueFull { retry_after, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, err.to_string()).with_retry_after(*retry_after)
            }
            ScheduleError::TimedOut { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, err.to_string()),
            ScheduleError::ShuttingDown(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()).with_retry_after(Duration::from_secs(1))
            }
            ScheduleError::TooManyRows { .. } | ScheduleError::BadPriority { .. } => ApiError::bad_request(err.to_string()),
            ScheduleError::Backend(_) | ScheduleError::Lost => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
            ScheduleError::Upstream(upstream) => ApiError::from(upstream.clone()),
        }
    }
}

impl From<crate::backend::UpstreamError> for ApiError {
    /// Overload upstream stays overload (429) and an upstream's refusal keeps its status, so clients can act on them;
    /// nobody able to answer is 503, a late answer 504, a broken or failed one 502 (Bad Gateway).
    fn from(err: crate::backend::UpstreamError) -> ApiError {
        use crate::backend::UpstreamError;
        let message = err.to_string();
        match err {
            UpstreamError::Unavailable { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).with_retry_after(Duration::from_secs(1)),
            UpstreamError::Timeout { .. } | UpstreamError::TimedOutThere { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, message),
            UpstreamError::Malformed { .. } | UpstreamError::Failed { .. } => ApiError::new(StatusCode::BAD_GATEWAY, message),
            UpstreamError::Overloaded { retry_after, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).with_retry_after(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            UpstreamError::Refused { status, .. } => {
                let status = StatusCode::from_u16(status).ok().filter(|s| s.is_client_error()).unwrap_or(StatusCode::BAD_GATEWAY);
                ApiError::new(status, message)
            }
        }
    }
}

impl From<crate::admission::AuthError> for ApiError {
    fn from(err: crate::admission::AuthError) -> ApiError {
        use crate::admission::AuthError;
        let message = err.to_string();
        match err {
            AuthError::Missing | AuthError::Invalid => ApiError::new(StatusCode::UNAUTHORIZED, message),
            AuthError::Forbidden { .. } => ApiError::new(StatusCode::FORBIDDEN, message),
            AuthError::RateLimited { retry_after, .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).with_retry_after(retry_after),
        }
    }
}
