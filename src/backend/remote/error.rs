//! What can go wrong talking to upstreams: [`AttemptError`] for one try on one endpoint (it decides whether to retry
//! and whether the endpoint is to blame), [`UpstreamError`] for the request as the client sees it.

use std::time::Duration;

/// Why a request to a pool failed, after any retries. Each kind has its own client status (see `protocol::error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No endpoint could take the request (all down, ejected or refusing): 503, retry later.
    #[error("no upstream of pool '{pool}' could serve the request: {last}")]
    Unavailable { pool: String, last: String },
    /// The last attempt (or the request's total time) ran out: 504.
    #[error("upstream {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// The upstream answered 504 / DEADLINE_EXCEEDED itself: 504.
    #[error("upstream {endpoint} timed out: {message}")]
    TimedOutThere { endpoint: String, message: String },
    /// The upstream answered something that is not a V2 response for this model: 502.
    #[error("upstream {endpoint} sent a malformed answer: {message}")]
    Malformed { endpoint: String, message: String },
    /// Every endpoint tried answered 429: backpressure passed on to the client as 429.
    #[error("upstreams of pool '{pool}' are overloaded: {message}")]
    Overloaded { pool: String, message: String, retry_after: Option<Duration> },
    /// The upstream refused the request itself (a 4xx other than 429, or gRPC INVALID_ARGUMENT and the like): the
    /// client gets the same status and the upstream's message.
    #[error("upstream {endpoint} refused the request: {message}")]
    Refused { endpoint: String, status: u16, message: String },
    /// The upstream failed on the request (a 5xx other than 503, or gRPC INTERNAL and the like): 502.
    #[error("upstream {endpoint} failed ({status}): {message}")]
    Failed { endpoint: String, status: u16, message: String },
}

/// One attempt's failure, before the pool decides what to do next.
#[derive(Debug, Clone)]
pub enum AttemptError {
    /// No connection could be made, or it broke before an answer (the request may or may not have been sent:
    /// `sent` says whether any of it was written).
    Connect { message: String, sent: bool },
    /// The HTTP/2 stream was refused (REFUSED_STREAM / GOAWAY before processing): never processed.
    RefusedStream(String),
    /// No answer within the per-try timeout.
    Timeout(Duration),
    /// The clients' deadline came first (the attempt had that long): not the endpoint's fault, and no time is left
    /// for a retry.
    ClientDeadline(Duration),
    /// 503 / UNAVAILABLE: the upstream is not taking work now.
    Unavailable(String),
    /// 429 / RESOURCE_EXHAUSTED.
    Overloaded { message: String, retry_after: Option<Duration> },
    /// Not a V2 answer.
    Malformed(String),
    /// 4xx other than 429: the request itself is refused; never retried.
    Refused { status: u16, message: String },
    /// 5xx other than 503.
    Failed { status: u16, message: String },
}

impl AttemptError {
    /// Whether another endpoint may get the request. `idempotent`: running it twice is harmless, so attempts whose
    /// request may have reached the upstream (timeouts, broken connections) may be retried too.
    pub fn retryable(&self, idempotent: bool) -> bool {
        match self {
            AttemptError::Connect { sent, .. } => idempotent || !sent,
            AttemptError::RefusedStream(_) | AttemptError::Unavailable(_) | AttemptError::Overloaded { .. } => true,
            AttemptError::Timeout(_) => idempotent,
            AttemptError::ClientDeadline(_) => false,
            AttemptError::Malformed(_) | AttemptError::Refused { .. } | AttemptError::Failed { .. } => false,
        }
    }

    /// Whether the endpoint is to blame (counts towards its ejection). An overloaded endpoint is healthy (it said so
    /// quickly), and a refused request is the client's fault.
    pub fn counts_against_endpoint(&self) -> bool {
        !matches!(self, AttemptError::Overloaded { .. } | AttemptError::Refused { .. } | AttemptError::ClientDeadline(_))
    }

    /// The label of `sluice_upstream_requests_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            AttemptError::Connect { .. } => "connect_error",
            AttemptError::RefusedStream(_) => "refused_stream",
            AttemptError::Timeout(_) => "timeout",
            AttemptError::ClientDeadline(_) => "client_deadline",
            AttemptError::Unavailable(_) => "unavailable",
            AttemptError::Overloaded { .. } => "overloaded",
            AttemptError::Malformed(_) => "malformed",
            AttemptError::Refused { .. } => "refused",
            AttemptError::Failed { .. } => "failed",
        }
    }

    /// The client's error when this was the last attempt.
    pub fn into_upstream(self, pool: &str, endpoint: &str) -> UpstreamError {
        let endpoint = endpoint.to_string();
        match self {
            AttemptError::Connect { message, .. } | AttemptError::RefusedStream(message) | AttemptError::Unavailable(message) => {
                UpstreamError::Unavailable { pool: pool.into(), last: format!("{endpoint}: {message}") }
            }
            AttemptError::Timeout(timeout) | AttemptError::ClientDeadline(timeout) => UpstreamError::Timeout { endpoint, timeout },
            AttemptError::Overloaded { message, retry_after } => {
                UpstreamError::Overloaded { pool: pool.into(), message: format!("{endpoint}: {message}"), retry_after }
            }
            AttemptError::Malformed(message) => UpstreamError::Malformed { endpoint, message },
            AttemptError::Refused { status, message } => UpstreamError::Refused { endpoint, status, message },
            AttemptError::Failed { status: 504, message } => UpstreamError::TimedOutThere { endpoint, message },
            AttemptError::Failed { status, message } => UpstreamError::Failed { endpoint, status, message },
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Connect { message, .. } => write!(f, "connection failed: {message}"),
            AttemptError::RefusedStream(m) => write!(f, "stream refused: {m}"),
            AttemptError::Timeout(t) => write!(f, "no answer within {t:?}"),
            AttemptError::ClientDeadline(t) => write!(f, "no answer within {t:?}, when the request's deadline came"),
            AttemptError::Unavailable(m) => write!(f, "unavailable: {m}"),
            AttemptError::Overloaded { message, .. } => write!(f, "overloaded: {message}"),
            AttemptError::Malformed(m) => write!(f, "malformed answer: {m}"),
            AttemptError::Refused { status, message } => write!(f, "refused ({status}): {message}"),
            AttemptError::Failed { status, message } => write!(f, "failed ({status}): {message}"),
        }
    }
}
