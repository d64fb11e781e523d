//! Talking V2 to one endpoint: inference, readiness and model metadata, over HTTP (binary tensor extension, pooled
//! keep-alive connections) or gRPC (one multiplexed HTTP/2 channel). Every failure is classified as an
//! [`AttemptError`]; the caller bounds each call with its own timeout.

use super::error::AttemptError;
use super::h1::{Answer, Connections, ExchangeError};
use crate::backend::{RawAnswer, RawInfer};
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::protocol::grpc::pb;
use crate::protocol::json::{self, DecodeLimits};
use crate::protocol::model_metadata::{self, RemoteMetadata};
use crate::protocol::{answer_scan, grpc, NamedTensor};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// The HTTP client a pool shares between its endpoints (its connection pool is per host).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Largest error body read from an upstream (only its message is kept).
const MAX_ERROR_BODY: usize = 64 * 1024;

pub fn http_client(config: &UpstreamConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(30)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.idle_timeout)
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(config.max_concurrency)
        .build(connector)
}

/// A request encoded once for all its attempts: the V2 binary-extension body for HTTP, the message for gRPC.
pub enum Prepared {
    Http { path: String, body: Bytes, header_length: Option<usize> },
    Grpc(pb::ModelInferRequest),
}

impl Prepared {
    pub fn new(protocol: UpstreamProtocol, model: &str, version: Option<&str>, inputs: &[NamedTensor]) -> Result<Prepared, AttemptError> {
        match protocol {
            UpstreamProtocol::Http => {
                let encoded = json::encode_request(inputs, true, true)
                    .map_err(|e| AttemptError::Refused { status: 400, message: format!("cannot encode the request: {e}") })?;
                Ok(Prepared::Http { path: infer_path(model, version), body: encoded.body, header_length: encoded.json_header_length })
            }
            UpstreamProtocol::Grpc => Ok(Prepared::Grpc(grpc::encode_request(model, version, None, inputs))),
        }
    }
}

/// The V2 HTTP inference path of a model (and version).
pub fn infer_path(model: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
        None => format!("/v2/models/{model}/infer"),
    }
}

/// What a pool needs to reach one endpoint.
#[derive(Clone)]
pub enum EndpointClient {
    /// Inference goes over `connections`; readiness and metadata over the shared `client`.
    Http { client: HttpClient, connections: Arc<Connections>, base: String, max_response_bytes: usize, authorization: Option<HeaderValue> },
    /// Inference over `client`; readiness and metadata over `control`, a connection of their own, so that checks of a
    /// worker whose HTTP/2 stream limit is taken by inference still get through (and do not eject a busy worker).
    Grpc {
        client: GrpcInferenceServiceClient<Channel>,
        control: GrpcInferenceServiceClient<Channel>,
        authorization: Option<tonic::metadata::AsciiMetadataValue>,
    },
}

/// `Authorization: Bearer <key>`, what Sluice workers (and most V2 servers behind an auth proxy) take.
fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Puts the gateway's credentials, if any, on a gRPC request.
fn with_credentials<T>(message: T, authorization: &Option<tonic::metadata::AsciiMetadataValue>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.clone());
    }
    request
}

impl EndpointClient {
    /// A client for `address` (`host:port`); gRPC channels connect lazily, so this never waits. `api_key`: what the
    /// gateway presents to the workers (`Authorization: Bearer`), if anything.
    pub fn new(config: &UpstreamConfig, address: &str, http: &HttpClient, max_message_bytes: usize, api_key: Option<&str>) -> Result<EndpointClient, String> {
        let base = format!("http://{address}");
        const INVALID_KEY: &str = "the API key holds characters a header cannot carry";
        match config.protocol {
            UpstreamProtocol::Http => {
                let authorization = api_key.map(|key| HeaderValue::from_str(&bearer(key))).transpose().map_err(|_| INVALID_KEY.to_string())?;
                let extra_headers = authorization.as_ref().map(|v| [b"authorization: ", v.as_bytes(), b"\r\n"].concat()).unwrap_or_default();
                Ok(EndpointClient::Http {
                    client: http.clone(),
                    connections: Arc::new(Connections::new(address, extra_headers, config.connect_timeout, config.idle_timeout, config.max_concurrency)),
                    base,
                    max_response_bytes: max_message_bytes,
                    authorization,
                })
            }
            UpstreamProtocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(base)
                    .map_err(|e| format!("bad upstream address '{address}': {e}"))?
                    .connect_timeout(config.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10));
                let client = GrpcInferenceServiceClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(max_message_bytes);
                // Each lazily connected channel is its own HTTP/2 connection.
                let control = GrpcInferenceServiceClient::new(endpoint.connect_lazy()).max_decoding_message_size(max_message_bytes);
                let authorization = api_key.map(|key| bearer(key).parse()).transpose().map_err(|_| INVALID_KEY.to_string())?;
                Ok(EndpointClient::Grpc { client, control, authorization })
            }
        }
    }

    /// Runs one inference of a prepared request; returns the answer's outputs as named tensors (in the upstream's order).
    /// `time`: how long the attempt is waited for, which gRPC workers are told (`grpc-timeout`) so that they can drop
    /// it once nobody waits for the answer.
    pub async fn infer(&self, request: &Prepared, limits: DecodeLimits, time: Duration) -> Result<Vec<NamedTensor>, AttemptError> {
        match (self, request) {
            (EndpointClient::Http { connections, max_response_bytes, .. }, Prepared::Http { path, body, header_length }) => {
                let answer = ok_answer(connections.post(path, *header_length, body, *max_response_bytes).await)?;
                let (head, binary) = json::split_body(&answer.body, answer.header_length.as_deref()).map_err(|e| AttemptError::Malformed(e.to_string()))?;
                let decoded = json::decode_response(&head, binary, limits).map_err(|e| AttemptError::Malformed(e.to_string()))?;
                Ok(decoded.outputs)
            }
            (EndpointClient::Grpc { client, authorization, .. }, Prepared::Grpc(request)) => {
                let mut request = with_credentials(request.clone(), authorization);
                request.set_timeout(time);
                let response = client.clone().model_infer(request).await.map_err(|s| grpc_error(&s))?;
                grpc::decode_response(response.into_inner(), limits).map_err(|e| AttemptError::Malformed(e.to_string()))
            }
            _ => Err(AttemptError::Refused { status: 500, message: "a request prepared for one upstream protocol was sent over the other".into() }),
        }
    }

    /// Sends a client's V2 HTTP body as it is; a 200 answer is checked to be a V2 inference answer (see
    /// [`check_answer`]) and returned undecoded. Other answers fail as for [`EndpointClient::infer`].
    pub async fn forward(&self, path: &str, request: &RawInfer) -> Result<RawAnswer, AttemptError> {
        let EndpointClient::Http { connections, max_response_bytes, .. } = self else {
            return Err(AttemptError::Refused { status: 500, message: "only HTTP upstreams forward requests as they are".into() });
        };
        let answer = ok_answer(connections.post(path, request.header_length, &request.body, *max_response_bytes).await)?;
        let header_length = check_answer(&answer.body, answer.header_length.as_deref()).map_err(AttemptError::Malformed)?;
        Ok(RawAnswer { body: answer.body, header_length })
    }

    /// Whether the server says it is ready (`GET /v2/health/ready` answers 200, or gRPC `ServerReady` is true).
    pub async fn ready(&self) -> bool {
        match self {
            EndpointClient::Http { client, base, authorization, .. } => {
                let Ok(request) = get_request(&format!("{base}/v2/health/ready"), authorization) else { return false };
                match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status() == StatusCode::OK;
                        // Read the (small) body so the connection goes back to the pool.
                        let _ = read_body(response.into_body(), MAX_ERROR_BODY).await;
                        ok
                    }
                    Err(_) => false,
                }
            }
            EndpointClient::Grpc { control, authorization, .. } => {
                let request = with_credentials(pb::ServerReadyRequest {}, authorization);
                matches!(control.clone().server_ready(request).await, Ok(r) if r.get_ref().ready)
            }
        }
    }

    /// The model's metadata (`version` `None`: the server's default version).
    pub async fn metadata(&self, model: &str, version: Option<&str>) -> Result<RemoteMetadata, AttemptError> {
        match self {
            EndpointClient::Http { client, base, authorization, .. } => {
                let url = match version {
                    Some(v) => format!("{base}/v2/models/{model}/versions/{v}"),
                    None => format!("{base}/v2/models/{model}"),
                };
                let request = get_request(&url, authorization).map_err(|e| AttemptError::Malformed(format!("bad URL {url}: {e}")))?;
                let response = client.request(request).await.map_err(|e| http_error(&e))?;
                let status = response.status();
                let retry_after = retry_after(response.headers().get(RETRY_AFTER));
                let body = read_body(response.into_body(), MAX_ERROR_BODY * 16).await?;
                if status != StatusCode::OK {
                    return Err(status_error(status, &body, retry_after));
                }
                model_metadata::from_json(&body).map_err(|e| AttemptError::Malformed(e.to_string()))
            }
            EndpointClient::Grpc { control, authorization, .. } => {
                let request = pb::ModelMetadataRequest { name: model.into(), version: version.unwrap_or_default().into() };
                let request = with_credentials(request, authorization);
                let response = control.clone().model_metadata(request).await.map_err(|s| grpc_error(&s))?;
                model_metadata::from_grpc(response.into_inner()).map_err(|e| AttemptError::Malformed(e.to_string()))
            }
        }
    }

    /// Drops the idle inference connections that outlived the idle timeout.
    pub fn prune(&self) {
        if let EndpointClient::Http { connections, .. } = self {
            connections.prune();
        }
    }
}

/// `GET url`, with the gateway's credentials if it has any.
fn get_request(url: &str, authorization: &Option<HeaderValue>) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    let mut request = hyper::Request::get(url);
    if let Some(value) = authorization {
        request = request.header(hyper::header::AUTHORIZATION, value.clone());
    }
    request.body(Full::new(Bytes::new()))
}

fn exchange_error(e: ExchangeError) -> AttemptError {
    match e {
        ExchangeError::Connect { .. } => AttemptError::Connect { message: e.to_string(), sent: false },
        ExchangeError::Broken(message) => AttemptError::Connect { message, sent: true },
        ExchangeError::Malformed(message) => AttemptError::Malformed(message),
    }
}

/// The checks a forwarded answer passes without being decoded: its JSON header parses, has `outputs` (a list of
/// objects), and the binary section is exactly as long as the outputs' `binary_data_size`s add up to. Datatypes,
/// shapes and `data` are left to the client, as a plain proxy would. Returns the JSON header's length.
fn check_answer(body: &Bytes, header_length: Option<&str>) -> Result<Option<usize>, String> {
    let (head, binary) = json::split_body(body, header_length).map_err(|e| e.to_string())?;
    let claimed = match answer_scan::claimed_binary_bytes_memo(&head) {
        Some(claimed) => claimed,
        None => answer_scan::claimed_binary_bytes_by_serde(&head)?,
    };
    if claimed != binary.len() as u64 {
        return Err(format!("its outputs claim {claimed} bytes of binary data, but {} follow the JSON header", binary.len()));
    }
    Ok(header_length.map(|_| head.len()))
}

/// Reads a whole body, refusing more than `limit` bytes.
async fn read_body(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, AttemptError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AttemptError::Malformed(format!("answer larger than {limit} bytes"))),
        Err(e) => Err(AttemptError::Connect { message: format!("answer cut off: {e}"), sent: true }),
    }
}

fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    value.and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An inference exchange over the HTTP/1.1 client that answered 200; any other status fails as [`status_error`] says.
fn ok_answer(exchange: Result<Answer, ExchangeError>) -> Result<Answer, AttemptError> {
    let answer = exchange.map_err(exchange_error)?;
    let status = StatusCode::from_u16(answer.status).map_err(|_| AttemptError::Malformed(format!("invalid status {}", answer.status)))?;
    if status != StatusCode::OK {
        let shown = &answer.body[..answer.body.len().min(MAX_ERROR_BODY)];
        return Err(status_error(status, shown, answer.retry_after.as_deref().and_then(parse_retry_after)));
    }
    Ok(answer)
}

/// A hyper client error: a failed connect never reached the upstream; anything later may have.
fn http_error(e: &hyper_util::client::legacy::Error) -> AttemptError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        message = format!("{message}: {inner}");
        source = inner.source();
    }
    AttemptError::Connect { message, sent: !e.is_connect() }
}

/// A non-200 V2 answer: the message is the body's `error` field when there is one.
fn status_error(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> AttemptError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
            if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") }
        });
    let code = status.as_u16();
    match status {
        StatusCode::TOO_MANY_REQUESTS => AttemptError::Overloaded { message, retry_after },
        StatusCode::SERVICE_UNAVAILABLE => AttemptError::Unavailable(message),
        StatusCode::GATEWAY_TIMEOUT => AttemptError::Failed { status: code, message },
        // The upstream does not know the model, or refuses the gateway itself: not the client's fault.
        StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AttemptError::Failed { status: code, message: format!("HTTP {status}: {message}") },
        s if s.is_client_error() => AttemptError::Refused { status: code, message },
        s if s.is_server_error() => AttemptError::Failed { status: code, message },
        _ => AttemptError::Malformed(format!("unexpected status {status}: {message}")),
    }
}

/// A gRPC status from the upstream, or from tonic's own transport. A status with an error source never came from
/// the server (no grpc-status was read): it is classified by that source — a GOAWAY or REFUSED_STREAM means the
/// request was not processed (safe to retry anywhere), a refused connection means it was never sent, anything else
/// broke a call that may have run. Only real grpc-status codes are mapped by code.
fn grpc_error(status: &tonic::Status) -> AttemptError {
    use tonic::Code;
    let message = status.message().to_string();
    let mut source = std::error::Error::source(status);
    if source.is_some() {
        while let Some(e) = source {
            // tonic's own timer for the `grpc-timeout` the attempt carries: the attempt's time ran out.
            if e.downcast_ref::<tonic::TimeoutExpired>().is_some() {
                return AttemptError::Timeout(Duration::ZERO);
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                let not_processed = h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
                if not_processed && h2.is_remote() {
                    return AttemptError::RefusedStream(h2.to_string());
                }
                return AttemptError::Connect { message: h2.to_string(), sent: true };
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                let never_sent = matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable);
                return AttemptError::Connect { message: format!("{message}: {io}"), sent: !never_sent };
            }
            source = e.source();
        }
        // tonic's connect errors wrap the refused connection in its own types.
        let never_sent = message.contains("tcp connect error") || message.contains("Connection refused");
        return AttemptError::Connect { message, sent: !never_sent };
    }
    match status.code() {
        Code::Unavailable => AttemptError::Unavailable(message),
        Code::ResourceExhausted => AttemptError::Overloaded { message, retry_after: None },
        Code::DeadlineExceeded => AttemptError::Failed { status: 504, message },
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => AttemptError::Refused { status: 400, message },
        // An answer over the message limit, or a server that knows no such model or refuses the gateway itself:
        // the upstream, not the client, is at fault.
        Code::OutOfRange => AttemptError::Malformed(message),
        Code::NotFound | Code::Unauthenticated | Code::PermissionDenied => AttemptError::Failed { status: 502, message: format!("{:?}: {message}", status.code()) },
        Code::Cancelled => AttemptError::Connect { message: format!("call cancelled: {message}"), sent: true },
        Code::Internal if message.contains("decode") => AttemptError::Malformed(message),
        _ => AttemptError::Failed { status: 500, message: format!("{:?}: {message}", status.code()) },
    }
}

#[cfg(test)]
mod tests {
    use super::check_answer;
    use bytes::Bytes;

    #[test]
    fn forwarded_answers_are_checked_without_decoding() {
        let json = Bytes::from_static(br#"{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1.0]}]}"#);
        assert_eq!(check_answer(&json, None), Ok(None));
        let head = r#"{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}"#;
        let binary = Bytes::from([head.as_bytes(), &[0u8; 8]].concat());
        let length = head.len().to_string();
        assert_eq!(check_answer(&binary, Some(&length)), Ok(Some(head.len())));
        // The binary section must be exactly what the outputs claim.
        let short = binary.slice(..binary.len() - 1);
        assert!(check_answer(&short, Some(&length)).unwrap_err().contains("claim 8 bytes"));
        assert!(check_answer(&binary, None).unwrap_err().contains("not a V2 inference answer"));
        for bad in [&b"<html>no</html>"[..], br#"{"model_name":"m"}"#, br#"{"outputs":{}}"#, br#"{"outputs":[1]}"#] {
            assert!(check_answer(&Bytes::from_static(bad), None).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(check_answer(&json, Some("9999")).is_err());
    }
}
