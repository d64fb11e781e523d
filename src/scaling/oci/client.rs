//! One signed `PostMetricData` call over HTTPS (or plain HTTP, for tests), and what its answer means for the batch.
//!
//! TLS is rustls with the `ring` provider (the crate we already sign with, so no second crypto library) and the
//! Mozilla roots compiled in (`webpki-roots`): slim container images often lack a system CA bundle. The hyper-util
//! pooled client keeps the connection open between posts.

use super::signer::{Signer, CONTENT_TYPE};
use super::OciError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, DATE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The PostMetricData path (API version 20180401).
pub const METRICS_PATH: &str = "/20180401/metrics";

/// Answers are read up to this size; more is cut (we only log them).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Where posts go: the full URL, and the `host` and request-target path that are signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub url: Uri,
    /// The URL authority as sent: host, plus `:port` when it is not the scheme's default.
    pub host: String,
    /// Path (with the configured prefix, if any) as sent.
    pub path: String,
}

impl Endpoint {
    /// `configured` (`[scaling.oci] endpoint`) wins; else the commercial-realm (oc1) ingestion endpoint of `region`.
    /// Other realms (government clouds, dedicated regions) need `endpoint` set. `None` when there is neither.
    pub fn resolve(configured: Option<&str>, region: Option<&str>) -> Option<Result<Endpoint, OciError>> {
        match (configured.map(str::trim).filter(|e| !e.is_empty()), region) {
            (Some(url), _) => Some(Endpoint::parse(url)),
            (None, Some(region)) => Some(check_region(region).and_then(|()| {
                Endpoint::parse(&format!("https://telemetry-ingestion.{region}.oraclecloud.com"))
            })),
            (None, None) => None,
        }
    }

    /// An `http(s)://host[:port][/prefix]` base URL; [`METRICS_PATH`] is appended.
    pub fn parse(base: &str) -> Result<Endpoint, OciError> {
        let bad = |message: &str| OciError::Endpoint { endpoint: base.to_string(), message: message.to_string() };
        let uri: Uri = base.parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
        let default_port = match uri.scheme_str() {
            Some("https") => 443,
            Some("http") => 80,
            _ => return Err(bad("must start with https:// (or http:// for a local test receiver)")),
        };
        let Some(authority) = uri.authority() else { return Err(bad("has no host")) };
        if authority.as_str().contains('@') {
            return Err(bad("must not hold user info (credentials come from the OCI config file)"));
        }
        if authority.host().is_empty() {
            return Err(bad("has no host"));
        }
        if uri.query().is_some() {
            return Err(bad("must not have a query string"));
        }
        let host = match authority.port_u16() {
            Some(port) if port != default_port => authority.as_str().to_string(),
            _ => authority.host().to_string(),
        };
        let path = format!("{}{METRICS_PATH}", uri.path().trim_end_matches('/'));
        let scheme = uri.scheme_str().unwrap_or("https");
        let url: Uri = format!("{scheme}://{host}{path}").parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
        Ok(Endpoint { url, host, path })
    }
}

/// Region identifiers are lowercase words joined by `-` (e.g. `us-ashburn-1`); short codes (`iad`) are not mapped.
pub fn check_region(region: &str) -> Result<(), OciError> {
    let valid = !region.is_empty()
        && region.contains('-')
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(OciError::Region {
            region: region.to_string(),
            message: "is not a region identifier such as us-ashburn-1 (short codes are not mapped; set \
                      [scaling.oci] region or endpoint)"
                .into(),
        })
    }
}

/// What a post's answer means for its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx. `failed` objects were refused one by one (OCI's NON_ATOMIC default); `detail` lists some reasons.
    Delivered { failed: u64, detail: String },
    /// 408, 429, 5xx, a timeout or a connection error: keep the batch and try again later.
    Retry(String),
    /// Any other answer: the batch will never be accepted as it is.
    Rejected { status: u16, detail: String },
}

/// What to do with an HTTP answer.
pub fn classify(status: u16, body: &[u8]) -> Outcome {
    match status {
        200..=299 => {
            let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let failed = json.get("failedMetricsCount").and_then(serde_json::Value::as_u64).unwrap_or(0);
            let messages: Vec<&str> = json
                .get("failedMetrics")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().filter_map(|f| f.get("message").and_then(serde_json::Value::as_str)).take(3).collect())
                .unwrap_or_default();
            Outcome::Delivered { failed, detail: messages.join("; ") }
        }
        408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}: {}", error_detail(body))),
        _ => Outcome::Rejected { status, detail: error_detail(body) },
    }
}

/// `code: message` of an OCI error body, else the start of the body as text.
fn error_detail(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let field = |k: &str| json.get(k).and_then(serde_json::Value::as_str).map(str::to_string);
        if let (Some(code), Some(message)) = (field("code"), field("message")) {
            return format!("{code}: {message}");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty body)".into(),
        None => text.to_string(),
    }
}

/// An error and its causes, on one line (hyper's top-level messages alone say little, e.g. "client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

type HttpClient = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct Client {
    http: HttpClient,
    endpoint: Endpoint,
    signer: Arc<Signer>,
    timeout: Duration,
}

impl Client {
    pub fn new(endpoint: Endpoint, signer: Signer, timeout: Duration) -> Result<Client, OciError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| OciError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(https);
        Ok(Client { http, endpoint, signer: Arc::new(signer), timeout })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Signs and posts `body`; the whole call (connect, send, read the answer) is bounded by the timeout.
    ///
    /// The RSA signature (about 1 ms of CPU) is made on the blocking pool, so it never holds up a runtime worker that
    /// might be serving inference requests.
    pub async fn post(&self, body: Vec<u8>) -> Outcome {
        let signer = self.signer.clone();
        let (host, path) = (self.endpoint.host.clone(), self.endpoint.path.clone());
        let signed = tokio::task::spawn_blocking(move || {
            let headers = signer.sign_post(&host, &path, &body, SystemTime::now());
            (body, headers)
        })
        .await;
        let (body, headers) = match signed {
            Ok((body, Ok(headers))) => (body, headers),
            Ok((_, Err(e))) => return Outcome::Retry(e.to_string()),
            Err(e) => return Outcome::Retry(format!("signing task failed: {e}")),
        };
        let request_id = format!("{:032X}", rand::random::<u128>());
        let request = Request::post(self.endpoint.url.clone())
            .header(HOST, headers.host)
            .header(DATE, headers.date)
            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(CONTENT_LENGTH, headers.content_length)
            .header("x-content-sha256", headers.x_content_sha256)
            .header(ACCEPT, "application/json")
            .header("opc-request-id", request_id.as_str())
            .header(USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .header(AUTHORIZATION, headers.authorization)
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Outcome::Rejected { status: 0, detail: format!("cannot build the request: {e}") },
        };
        let call = async {
            let response = self.http.request(request).await.map_err(|e| error_chain(&e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await;
            // A cut or broken answer body still has a meaningful status.
            let body = body.map(|b| b.to_bytes()).unwrap_or_default();
            Ok::<_, String>(classify(status, &body))
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::Retry(e),
            Err(_) => Outcome::Retry(format!("no answer within {:?}", self.timeout)),
        };
        match outcome {
            Outcome::Retry(why) => Outcome::Retry(format!("{why} (opc-request-id {request_id})")),
            Outcome::Rejected { status, detail } => Outcome::Rejected { status, detail: format!("{detail} (opc-request-id {request_id})") },
            delivered => delivered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::resolve(None, Some("us-ashburn-1")).unwrap().unwrap();
        assert_eq!(e.url.to_string(), "https://telemetry-ingestion.us-ashburn-1.oraclecloud.com/20180401/metrics");
        assert_eq!(e.host, "telemetry-ingestion.us-ashburn-1.oraclecloud.com");
        assert_eq!(e.path, "/20180401/metrics");
        let e = Endpoint::resolve(Some("http://127.0.0.1:8080/"), None).unwrap().unwrap();
        assert_eq!((e.host.as_str(), e.path.as_str()), ("127.0.0.1:8080", "/20180401/metrics"));
        assert_eq!(e.url.to_string(), "http://127.0.0.1:8080/20180401/metrics");
        let e = Endpoint::parse("https://proxy.example:443/oci").unwrap();
        assert_eq!((e.host.as_str(), e.path.as_str()), ("proxy.example", "/oci/20180401/metrics"), "default port not sent");
        assert!(Endpoint::resolve(None, None).is_none());
        for bad in ["ftp://x", "telemetry.example.com", "https://u:p@x", "https://x/?a=1", "http://", "not a url"] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains("endpoint"), "{bad}: {err}");
        }
        for bad in ["iad", "US-ASHBURN-1", "us ashburn", ""] {
            assert!(Endpoint::resolve(None, Some(bad)).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(200, br#"{"failedMetricsCount":0,"failedMetrics":[]}"#), Outcome::Delivered { failed: 0, detail: String::new() });
        let partial = br#"{"failedMetricsCount":2,"failedMetrics":[{"message":"too old","metricData":{}},{"message":"bad name"}]}"#;
        assert_eq!(classify(200, partial), Outcome::Delivered { failed: 2, detail: "too old; bad name".into() });
        assert_eq!(classify(200, b""), Outcome::Delivered { failed: 0, detail: String::new() });
        for status in [408, 429, 500, 502, 503] {
            assert!(matches!(classify(status, b"x"), Outcome::Retry(_)), "{status}");
        }
        let err = br#"{"code":"InvalidParameter","message":"namespace is bad"}"#;
        assert_eq!(classify(400, err), Outcome::Rejected { status: 400, detail: "InvalidParameter: namespace is bad".into() });
        assert!(matches!(classify(401, b""), Outcome::Rejected { status: 401, .. }));
        assert!(matches!(classify(404, b"<html>"), Outcome::Rejected { status: 404, .. }));
        let long = "é".repeat(1000);
        let Outcome::Rejected { detail, .. } = classify(400, long.as_bytes()) else { panic!() };
        assert_eq!(detail.chars().count(), 301);
    }
}
