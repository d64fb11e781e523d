//! Sluice's own HTTP/1.1 lane: the data plane's plain requests read, answered and written by Sluice itself, on the
//! connection's own task; anything unusual goes to hyper.
//!
//! Why: on a gateway that forwards small requests, hyper's HTTP/1 server (its header map, URI and dispatcher) was
//! about a third of the CPU a request took, more than the forwarding itself (docs/BENCHMARKS.md). The lane parses a
//! request head with `httparse` (what hyper uses). An inference request ([`Route::Infer`]) has the nine headers its
//! route needs read in place, and a forwarded answer's head is written without building a header map. Other plain
//! requests — health, metadata, statistics, and inference when authentication is on, since credentials are checked
//! on a header map — are built into an `http::Request` for the same service ([`Route::General`]).
//!
//! It takes only plain requests: HTTP/1.1, origin-form targets, not `HEAD` or `CONNECT`, at most one `Content-Length`
//! within the body limit, no `Transfer-Encoding`, `Expect`, `Upgrade` or `Connection` other than `keep-alive` or
//! `close`, a head within the size limit. The first request that is anything else hands the connection — the bytes
//! read so far included — to hyper for the rest of its life ([`Rewind`]), so such requests get exactly the answer
//! they got before the lane existed (errors for bad heads included).
//!
//! The lane keeps the connection protections of [`super::conn`]: the first request head must be complete within
//! `header_read_timeout` of the connection's start, later heads within `header_read_timeout` of their first byte; a
//! connection idle for `idle_timeout` between requests is closed; a body must arrive within `body_read_timeout` of
//! the first read that had to wait for it (else 408 and the connection is closed); and at a graceful shutdown an idle
//! connection is closed at once, a busy one after its answer (which then says `Connection: close`). A client that
//! closes its connection while its request is in flight withdraws the request, as with hyper.

use super::conn::{BodyTimedOut, ConnLimits, HttpService, PeerInfo};
use super::http::{Answer, InferHeaders};
use super::latch::Latch;
use super::AppState;
use crate::protocol::http1::write_all_vectored;
use crate::protocol::ApiError;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use metrics::Counter;
use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Most header lines a lane request may have; a request with more goes to hyper (which allows more).
const MAX_HEADERS: usize = 32;
/// Read buffer to start with: a small V2 request fits in one read.
const READ_CHUNK: usize = 8 * 1024;
/// The largest body read (and dropped) after a refusal from the head, to keep the connection; a larger one closes it.
const MAX_DISCARDED_BODY: usize = 64 * 1024;

/// The counters the lane adds to (the listener's, shared with hyper's path).
pub struct LaneCounters<'a> {
    pub header_timeout: &'a Counter,
    pub body_timeout: &'a Counter,
}

/// How a lane connection ended.
pub enum LaneEnd {
    /// The connection is done (closed by the peer, timed out, failed, or closed after its last answer).
    Closed,
    /// A request the lane does not take: hyper serves the connection from here, starting with these bytes.
    HandOff(Bytes),
}

/// A request head the lane takes.
struct LaneHead {
    /// Head length in the buffer.
    len: usize,
    body_len: usize,
    /// `Connection: close`: the connection ends with this request's answer.
    close: bool,
    route: Route,
}

enum Route {
    /// An inference, answered by [`super::http::lane_infer`] from the headers it reads (ranges of the head).
    Infer {
        model: String,
        version: Option<String>,
        content_length: Range<usize>,
        content_encoding: Option<Range<usize>>,
        header_length: Option<Range<usize>>,
        cache_control: Option<Range<usize>>,
        request_id: Option<Range<usize>>,
    },
    /// Any other request: built into an `http::Request` and given to the service (health, metadata, statistics, and
    /// inference when authentication is on).
    General,
}

enum Parsed {
    Lane(LaneHead),
    /// More bytes are needed to tell.
    Partial,
    /// Not a lane request: hyper's.
    Other,
}

/// Serves `io`'s requests until it closes or a request is not for the lane. `state` is the data plane's, `service`
/// answers the requests that are not plain inference, `peer` is the connection's.
#[allow(clippy::too_many_arguments)]
pub async fn serve<IO, S>(
    io: &mut IO,
    service: &S,
    state: &AppState,
    peer: &PeerInfo,
    limits: &ConnLimits,
    counters: &LaneCounters<'_>,
    graceful: &Latch,
) -> LaneEnd
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: HttpService,
{
    let fast_infer = state.auth.is_none();
    let started = Instant::now();
    let mut timer = Timer::new(started + limits.header_read_timeout);
    let closing = graceful.wait();
    tokio::pin!(closing);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(256);
    let mut first = true;
    loop {
        // A complete head, with its deadline: from the connection's start for the first request; for later ones,
        // `idle_timeout` while no byte of it has come, then `header_read_timeout` from its first byte.
        let mut idle_since: Option<Instant> = None;
        let mut head_since: Option<Instant> = None;
        let head = loop {
            if !buf.is_empty() {
                match parse(&buf, limits.max_header_bytes, state.max_body_bytes, fast_infer) {
                    Parsed::Lane(head) => break head,
                    Parsed::Partial => {}
                    Parsed::Other => {
                        tracing::trace!(head = %String::from_utf8_lossy(&buf[..buf.len().min(512)]), "a request for hyper: the connection leaves the lane");
                        return LaneEnd::HandOff(buf.freeze());
                    }
                }
            }
            let waiting_idle = buf.is_empty();
            if waiting_idle && graceful.is_set() {
                return LaneEnd::Closed;
            }
            let deadline = || {
                if first {
                    started + limits.header_read_timeout
                } else if waiting_idle {
                    *idle_since.get_or_insert_with(Instant::now) + limits.idle_timeout
                } else {
                    *head_since.get_or_insert_with(Instant::now) + limits.header_read_timeout
                }
            };
            let watch = waiting_idle.then_some(closing.as_mut());
            match read_within(io, &mut buf, &mut timer, deadline, watch).await {
                Read::Some => {}
                Read::End | Read::Failed | Read::Closing => return LaneEnd::Closed,
                Read::TimedOut => {
                    if first || !waiting_idle {
                        counters.header_timeout.increment(1);
                        tracing::debug!("request head not received within the header read timeout: closing the connection");
                    }
                    return LaneEnd::Closed;
                }
            }
        };
        first = false;
        // An overloaded model's 429 is decided from the head: its body is then read only to keep the connection (and
        // not at all when it is large: the connection closes), never decoded.
        let (mut refused, held_on) = match &head.route {
            Route::Infer { model, version, .. } => super::http::lane_refusal(state, model, version.as_deref()).unzip(),
            Route::General => (None, None),
        };
        if let Some(answer) = refused.take_if(|_| head.body_len > MAX_DISCARDED_BODY) {
            let _ = write_answer(io, &mut out, answer, true).await;
            let _ = io.shutdown().await;
            return LaneEnd::Closed;
        }
        // The body, timed from the first read that had to wait for it.
        let total = head.len + head.body_len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            let mut body_since: Option<Instant> = None;
            while buf.len() < total {
                let deadline = || *body_since.get_or_insert_with(Instant::now) + limits.body_read_timeout;
                match read_within(io, &mut buf, &mut timer, deadline, None::<Pin<&mut std::future::Pending<()>>>).await {
                    Read::Some => {}
                    Read::End | Read::Failed | Read::Closing => return LaneEnd::Closed,
                    Read::TimedOut => {
                        counters.body_timeout.increment(1);
                        let refused = ApiError::new(StatusCode::REQUEST_TIMEOUT, BodyTimedOut(limits.body_read_timeout).to_string());
                        // The rest of the body is not read: the connection cannot carry another request.
                        let _ = write_answer(io, &mut out, Answer::Other(refused.into_response()), true).await;
                        let _ = io.shutdown().await;
                        return LaneEnd::Closed;
                    }
                }
            }
        }
        let request = buf.split_to(total).freeze();
        let answer = async {
            if let Some(answer) = refused {
                return answer;
            }
            match head.route {
                Route::Infer { model, version, content_length, content_encoding, header_length, cache_control, request_id } => {
                    let at = |range: &Range<usize>| &request[range.clone()];
                    let headers = InferHeaders {
                        content_length: Some(at(&content_length)),
                        content_encoding: content_encoding.as_ref().map(at),
                        header_length: header_length.as_ref().map(at),
                        cache_control: cache_control.as_ref().map(at),
                        request_id: request_id.as_ref().map(at),
                    };
                    super::http::lane_infer(state, model, version, headers, request.slice(head.len..)).await
                }
                Route::General => match build_request(&request, head.len) {
                    Ok(built) => Answer::Other(service.call(built, peer).await),
                    Err(message) => Answer::Other(ApiError::bad_request(message).into_response()),
                },
            }
        };
        // A client that goes away while its request is in flight withdraws it (a queued request never runs), as with
        // hyper: the connection is read meanwhile, for its end and for what a pipelining client sends next.
        let Some(answer) = unless_closed(io, &mut buf, limits.max_header_bytes, answer).await else {
            return LaneEnd::Closed;
        };
        let close = head.close || graceful.is_set();
        match write_answer(io, &mut out, answer, close).await {
            Ok(false) => {}
            Ok(true) | Err(_) => {
                let _ = io.shutdown().await;
                return LaneEnd::Closed;
            }
        }
        // Refused for a full queue: the next request stays unread until the queue has room (see `refused_hold`).
        if let Some(model) = held_on.filter(|m| !limits.refused_hold.is_zero() && m.scheduler.hold_refused()) {
            tokio::select! {
                _ = model.scheduler.room() => {}
                _ = tokio::time::sleep(limits.refused_hold) => {}
                _ = closing.as_mut() => {}
            }
        }
    }
}

/// The `http::Request` of a general lane request (`request`: its head, `head_len` bytes, then its whole body); header
/// values and the body share `request`'s bytes.
fn build_request(request: &Bytes, head_len: usize) -> Result<Request<axum::body::Body>, String> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut lines);
    match parsed.parse(&request[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("the request head cannot be parsed".into()),
    }
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()).map_err(|e| format!("bad method: {e}"))?;
    let target = parsed.path.unwrap_or_default();
    let uri = Uri::from_maybe_shared(request.slice_ref(target.as_bytes())).map_err(|e| format!("bad request target '{target}': {e}"))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for line in parsed.headers.iter() {
        let name = HeaderName::from_bytes(line.name.as_bytes()).map_err(|_| format!("bad header name '{}'", line.name))?;
        let value = HeaderValue::from_maybe_shared(request.slice_ref(line.value)).map_err(|_| format!("bad value of header '{}'", line.name))?;
        headers.append(name, value);
    }
    let mut built = Request::new(axum::body::Body::from(request.slice(head_len..)));
    *built.method_mut() = method;
    *built.uri_mut() = uri;
    *built.version_mut() = Version::HTTP_11;
    *built.headers_mut() = headers;
    Ok(built)
}

/// Runs `work` while reading `io` into `buf` (at most `keep` bytes ahead): `None`, with `work` dropped, when the
/// connection ends or fails first.
async fn unless_closed<IO: AsyncRead + Unpin, T>(io: &mut IO, buf: &mut BytesMut, keep: usize, work: impl Future<Output = T>) -> Option<T> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        // Until the read is pending (its waker registered) or the buffer holds enough to wait on.
        while buf.len() < keep {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            match std::pin::pin!(io.read_buf(&mut *buf)).poll(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// The outcome of one read.
enum Read {
    Some,
    End,
    Failed,
    TimedOut,
    Closing,
}

/// Reads what `io` has into `buf`, unless `deadline()` (asked only when the read has to wait) passes first or
/// `closing` (when watched) ends.
async fn read_within<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    timer: &mut Timer,
    mut deadline: impl FnMut() -> Instant,
    mut closing: Option<Pin<&mut impl Future<Output = ()>>>,
) -> Read {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK.max(buf.len()));
    }
    let mut target: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        match std::pin::pin!(io.read_buf(buf)).poll(cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Read::End),
            Poll::Ready(Ok(_)) => return Poll::Ready(Read::Some),
            Poll::Ready(Err(_)) => return Poll::Ready(Read::Failed),
            Poll::Pending => {}
        }
        if let Some(closing) = closing.as_mut() {
            if closing.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Read::Closing);
            }
        }
        let target = *target.get_or_insert_with(&mut deadline);
        match timer.poll_until(cx, target) {
            Poll::Ready(()) => Poll::Ready(Read::TimedOut),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// One tokio timer per connection for all its waits. It is moved only when it would fire too late; when it fires
/// early (the wait it was set for is over), it is set again. Registering a timer per request was a few percent of a
/// forwarded request's CPU.
struct Timer {
    sleep: Pin<Box<Sleep>>,
}

impl Timer {
    fn new(first: Instant) -> Timer {
        Timer { sleep: Box::pin(tokio::time::sleep_until(first)) }
    }

    fn poll_until(&mut self, cx: &mut Context<'_>, target: Instant) -> Poll<()> {
        poll_sleep_until(self.sleep.as_mut(), cx, || target)
    }
}

/// Waits on a timer that other waits share, until `target()`: the timer is moved only when it would fire too late, and
/// set again when it fires early. `target` is asked again after each firing, for waits whose end moves (hyper's head
/// timer in `conn.rs` counts from the first byte of a head, which may come while it waits).
pub(super) fn poll_sleep_until(mut sleep: Pin<&mut Sleep>, cx: &mut Context<'_>, target: impl Fn() -> Instant) -> Poll<()> {
    loop {
        let until = target();
        if sleep.deadline() > until {
            sleep.as_mut().reset(until);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let until = target();
        if Instant::now() >= until {
            return Poll::Ready(());
        }
        sleep.as_mut().reset(until);
    }
}

/// Parses the head at the start of `buf` and tells whether the lane takes it. `fast_infer`: inference requests may
/// take [`Route::Infer`] (off when authentication is on).
fn parse(buf: &[u8], max_head: usize, max_body: usize, fast_infer: bool) -> Parsed {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Parsed::Partial,
        // Too large, too many headers, or not HTTP: hyper answers those as it always did.
        _ => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else { return Parsed::Other };
    // HEAD and CONNECT answers are framed differently; absolute and asterisk forms are rare: all hyper's.
    if method == "HEAD" || method == "CONNECT" || !target.starts_with('/') {
        return Parsed::Other;
    }
    let range = |value: &[u8]| {
        let start = value.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + value.len()
    };
    let (mut content_length, mut body_len, mut close) = (None, 0usize, false);
    let (mut content_encoding, mut header_length, mut cache_control, mut request_id) = (None, None, None, None);
    for line in request.headers.iter() {
        let name = line.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let Some(n) = parse_length(line.value) else { return Parsed::Other };
                if content_length.is_some() || n > max_body {
                    return Parsed::Other;
                }
                content_length = Some(range(line.value));
                body_len = n;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in line.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        return Parsed::Other;
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parsed::Other,
            6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::Other,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::Other,
            31 if name.eq_ignore_ascii_case(super::http::HEADER_LENGTH.as_bytes()) => {
                header_length.get_or_insert_with(|| range(line.value));
            }
            16 if name.eq_ignore_ascii_case(b"content-encoding") => {
                content_encoding.get_or_insert_with(|| range(line.value));
            }
            13 if name.eq_ignore_ascii_case(b"cache-control") => {
                cache_control.get_or_insert_with(|| range(line.value));
            }
            12 if name.eq_ignore_ascii_case(b"x-request-id") => {
                request_id.get_or_insert_with(|| range(line.value));
            }
            _ => {}
        }
    }
    let general = Parsed::Lane(LaneHead { len, body_len, close, route: Route::General });
    let (true, "POST", Some(content_length)) = (fast_infer, method, content_length) else { return general };
    let Some(path) = plain_path(target) else { return general };
    let Some((model, version)) = super::http::infer_route(path) else { return general };
    let route = Route::Infer { model, version, content_length, content_encoding, header_length, cache_control, request_id };
    Parsed::Lane(LaneHead { len, body_len, close, route })
}

/// The path of `target` (up to a `?`) when all its bytes are RFC 3986 `pchar`s without percent-escapes, or `/`.
/// Anything else is left to the router, which decodes escapes.
fn plain_path(target: &str) -> Option<&str> {
    const PLAIN: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            table[b] = c.is_ascii_alphanumeric();
            b += 1;
        }
        let extra = b"-._~!$&'()*+,;=:@/";
        let mut i = 0;
        while i < extra.len() {
            table[extra[i] as usize] = true;
            i += 1;
        }
        table
    };
    let bytes = target.as_bytes();
    let mut end = 0;
    while end < bytes.len() && bytes[end] != b'?' {
        if !PLAIN[bytes[end] as usize] {
            return None;
        }
        end += 1;
    }
    target.get(..end)
}

/// A `Content-Length` value: decimal digits only (no sign, no list), at most 18 of them.
fn parse_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    usize::try_from(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))).ok()
}

/// Writes `answer`; says whether the connection must close after it (`close`, or the answer asks to).
async fn write_answer<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>, answer: Answer, close: bool) -> io::Result<bool> {
    out.clear();
    // 204 and 304 answers have no body and no Content-Length (RFC 9110 §8.6).
    let no_body = matches!(&answer, Answer::Other(response) if matches!(response.status().as_u16(), 204 | 304));
    let (body, close) = match answer {
        Answer::Forwarded(answer) => {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            match answer.header_length {
                Some(n) => {
                    out.extend_from_slice(b"content-type: application/octet-stream\r\ninference-header-content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                None => out.extend_from_slice(b"content-type: application/json\r\n"),
            }
            (answer.body, close)
        }
        Answer::Other(response) => head_of(out, response, close).await,
    };
    let body = if no_body { Bytes::new() } else { body };
    if !no_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    date::append(out);
    out.extend_from_slice(b"\r\n");
    write_all_vectored(io, out, &body).await?;
    Ok(close)
}

/// Writes the status line and headers of `response` into `out` (framing headers excepted: the lane writes its own)
/// and reads its body, which is in memory for every answer of the inference route.
async fn head_of(out: &mut Vec<u8>, response: Response, mut close: bool) -> (Bytes, bool) {
    let (parts, body) = response.into_parts();
    let body = match http_body_util::BodyExt::collect(body).await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "an answer's body could not be read: the connection is closed");
            close = true;
            Bytes::new()
        }
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::DATE {
            continue;
        }
        if name == header::CONNECTION {
            close |= value.as_bytes().split(|&b| b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    (body, close)
}

/// The `Date` header, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static LAST: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
    }

    pub fn append(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if last.0 != second || last.1.is_empty() {
                last.0 = second;
                last.1.clear();
                last.1.extend_from_slice(b"date: ");
                last.1.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
                last.1.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(&last.1);
        });
    }
}

/// A connection that the lane read from, for hyper: the bytes the lane read but did not use come first.
pub struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    pub fn new(prefix: Bytes, io: IO) -> Rewind<IO> {
        Rewind { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{build_request, parse, parse_length, plain_path, Parsed, Route};
    use bytes::Bytes;

    fn route(head: &str, fast_infer: bool) -> Option<Route> {
        match parse(head.as_bytes(), 16 * 1024, 1 << 20, fast_infer) {
            Parsed::Lane(h) => Some(h.route),
            _ => None,
        }
    }

    fn infer(head: &str) -> Option<(String, Option<String>)> {
        match route(head, true) {
            Some(Route::Infer { model, version, .. }) => Some((model, version)),
            _ => None,
        }
    }

    fn general(head: &str) -> bool {
        matches!(route(head, true), Some(Route::General))
    }

    fn hyper(head: &str) -> bool {
        matches!(parse(head.as_bytes(), 16 * 1024, 1 << 20, true), Parsed::Other)
    }

    #[test]
    fn plain_inference_heads_take_the_inference_route() {
        assert_eq!(infer("POST /v2/models/identity/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n"), Some(("identity".into(), None)));
        let head = "POST /v2/models/m/versions/3/infer?x=1 HTTP/1.1\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(infer(head), Some(("m".into(), Some("3".into()))));
        let closing = "POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        assert!(matches!(parse(closing.as_bytes(), 1024, 1024, true), Parsed::Lane(h) if h.close));
    }

    #[test]
    fn other_simple_requests_take_the_general_route() {
        for head in [
            "GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET /v2/models/identity HTTP/1.1\r\n\r\n",
            "GET /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "POST /v2/models/identity HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "POST /v2/models/id%65ntity/infer HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "POST /v2/models//infer HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\n\r\n",
            "BREW /v2/models/identity/infer HTTP/1.1\r\n\r\n",
        ] {
            assert!(general(head), "{head:?}");
        }
        // With authentication on, inference is checked by the service like every other request.
        assert!(matches!(route("POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1\r\n\r\n", false), Some(Route::General)));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            "POST /v2/models/identity/infer HTTP/1.0\r\ncontent-length: 1\r\n\r\n",
            "HEAD /v2/health/ready HTTP/1.1\r\n\r\n",
            "CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            "POST http://x/v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1, 1\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 2000000\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1\r\nexpect: 100-continue\r\n\r\n",
            "POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
            "GET /v2/health/ready HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            "\x00\x01garbage\r\n\r\n",
            "GET /v2 HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(hyper(head), "{head:?}");
        }
    }

    #[test]
    fn unfinished_heads_wait_until_the_size_limit() {
        let head = b"POST /v2/models/identity/infer HTTP/1.1\r\ncontent-len";
        assert!(matches!(parse(head, 16 * 1024, 1 << 20, true), Parsed::Partial));
        assert!(matches!(parse(head, 20, 1 << 20, true), Parsed::Other));
        let complete = b"POST /v2/models/identity/infer HTTP/1.1\r\ncontent-length: 1\r\n\r\n";
        assert!(matches!(parse(complete, 40, 1 << 20, true), Parsed::Other), "a complete head over the limit is hyper's (431)");
    }

    #[test]
    fn header_values_are_found_where_they_are() {
        let head = "POST /v2/models/m/infer HTTP/1.1\r\nInference-Header-Content-Length: 17\r\nCache-Control: no-cache\r\nx-request-id: abc\r\nCONTENT-ENCODING: gzip\r\ncontent-length: 20\r\nx-request-id: second\r\n\r\n";
        let Parsed::Lane(h) = parse(head.as_bytes(), 16 * 1024, 1 << 20, true) else { panic!("not a lane head") };
        assert_eq!(h.len, head.len());
        assert_eq!(h.body_len, 20);
        let Route::Infer { content_length, content_encoding, header_length, cache_control, request_id, .. } = h.route else { panic!("not inference") };
        let at = |r: &std::ops::Range<usize>| &head[r.clone()];
        assert_eq!(at(&content_length), "20");
        assert_eq!(header_length.as_ref().map(at), Some("17"));
        assert_eq!(cache_control.as_ref().map(at), Some("no-cache"));
        assert_eq!(content_encoding.as_ref().map(at), Some("gzip"));
        assert_eq!(request_id.as_ref().map(at), Some("abc"), "the first value counts");
    }

    #[test]
    fn plain_paths_stop_at_the_query_and_refuse_escapes() {
        assert_eq!(plain_path("/v2/models/a-b_c.d~e/infer?x=%20"), Some("/v2/models/a-b_c.d~e/infer"));
        assert_eq!(plain_path("/v2/m:1@x!$&'()*+,;=/infer"), Some("/v2/m:1@x!$&'()*+,;=/infer"));
        assert_eq!(plain_path("/?"), Some("/"));
        for odd in ["/v2/%41", "/v2/a b", "/v2/a\"b", "/v2/a#b", "/v2/a{b}", "/v2/\u{e9}"] {
            assert_eq!(plain_path(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn content_lengths_are_plain_decimals() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 42 "), Some(42));
        for bad in [&b""[..], b"-1", b"+1", b"1,1", b"0x10", b"1 1", b"9999999999999999999"] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    /// Every single-byte deletion, duplication and replacement of a few seed heads: parsing never panics, an
    /// inference head's ranges lie inside its head and its Content-Length range reads as its body length, and a
    /// general head builds into a request (or a 400) without panicking.
    #[test]
    fn mutated_heads_never_break_the_parser() {
        let seeds = [
            "POST /v2/models/m/versions/2/infer?q=1 HTTP/1.1\r\nHost: h\r\nInference-Header-Content-Length: 5\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\n",
            "GET /v2/models/m HTTP/1.1\r\nx-request-id: r\r\ncache-control: no-cache\r\n\r\n",
            "POST /v2/models/m/infer HTTP/1.1\r\ncontent-encoding: identity\r\ncontent-length: 0\r\n\r\n",
        ];
        let mut built = (0, 0);
        for seed in seeds {
            let seed = seed.as_bytes();
            let variants = crate::testing::single_byte_mutations(seed, &[0u8, b' ', b'\r', b'\n', b':', b'/', b'?', b'%', b',', b'0', b'9', b'a', b'Z', 0x7f, 0x80, 0xff]);
            for input in variants {
                let Parsed::Lane(head) = parse(&input, 16 * 1024, 1 << 20, true) else { continue };
                assert!(head.len <= input.len());
                match head.route {
                    Route::Infer { content_length, content_encoding, header_length, cache_control, request_id, model, .. } => {
                        assert!(!model.is_empty());
                        for range in [Some(content_length.clone()), content_encoding, header_length, cache_control, request_id].into_iter().flatten() {
                            assert!(range.end <= head.len, "{:?}", String::from_utf8_lossy(&input));
                        }
                        let text = std::str::from_utf8(&input[content_length]).expect("digits");
                        assert_eq!(text.trim().parse::<usize>().ok(), Some(head.body_len));
                    }
                    Route::General => {
                        let mut request = input[..head.len].to_vec();
                        request.resize(head.len + head.body_len, b'x');
                        match build_request(&Bytes::from(request), head.len) {
                            Ok(_) => built.0 += 1,
                            Err(_) => built.1 += 1,
                        }
                    }
                }
            }
        }
        assert!(built.0 > 100, "general heads built: {built:?}");
    }

    #[test]
    fn general_requests_are_built_with_their_headers_and_body() {
        let head = "PUT /v2/x?y=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 4\r\n\r\n";
        let bytes = Bytes::from(format!("{head}body"));
        let built = build_request(&bytes, head.len()).expect("built");
        assert_eq!(built.method(), "PUT");
        assert_eq!(built.uri().path(), "/v2/x");
        assert_eq!(built.uri().query(), Some("y=1"));
        let values: Vec<_> = built.headers().get_all("x-a").iter().map(|v| v.to_str().unwrap_or_default().to_string()).collect();
        assert_eq!(values, ["1", "2"]);
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(built.into_body())).expect("ready").expect("body");
        assert_eq!(body.to_bytes(), "body");
    }
}
