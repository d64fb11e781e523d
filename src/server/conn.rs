//! Connection-level protection, shared by the HTTP, gRPC and admin listeners: TLS termination ([`super::tls`]), a cap
//! on open connections, TCP_NODELAY, timeouts for TLS handshakes, request heads, HTTP/2 prefaces, request bodies and
//! idle keep-alive connections, and a bound on request-head size. The HTTP listeners run their own accept loop on
//! hyper (HTTP/1.1, and HTTP/2 when TLS negotiates it); the gRPC listener gets an incoming stream of connections that
//! already passed all of this (see [`incoming`]). See docs/SECURITY.md.

use super::lane::{self, LaneCounters, LaneEnd, Rewind};
use super::tls::{Alpn, TlsSource};
use crate::config::ServerConfig;
use crate::metrics::{catalogue, Metrics};
use crate::protocol::ApiError;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::{Counter, Gauge};
use rustls::pki_types::CertificateDer;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The hostile-client limits of `[server]` (they apply to the admin listener too).
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    /// None: no HTTP/2 keep-alive pings.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// How long the HTTP/1.1 lane leaves a connection unread after refusing it for a full queue (see
    /// `ServerConfig::refused_hold`).
    pub refused_hold: Duration,
}

impl From<&ServerConfig> for ConnLimits {
    fn from(server: &ServerConfig) -> ConnLimits {
        ConnLimits {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            body_read_timeout: server.body_read_timeout,
            max_header_bytes: server.max_header_bytes,
            max_connections: server.max_connections,
            max_concurrent_streams: server.max_concurrent_streams,
            keepalive_interval: Some(server.keepalive_interval).filter(|d| !d.is_zero()),
            keepalive_timeout: server.keepalive_timeout,
            refused_hold: server.refused_hold,
        }
    }
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits::from(&ServerConfig::default())
    }
}

/// The counters of one listener.
struct ConnMetrics {
    open: Gauge,
    limit: Counter,
    tls_handshake: Counter,
    not_tls: Counter,
    header_timeout: Counter,
    body_timeout: Counter,
}

impl ConnMetrics {
    fn new(listener: &'static str, metrics: &Metrics) -> ConnMetrics {
        let refused = |reason: &'static str| metrics.counter(catalogue::CONNECTIONS_REFUSED, &[("listener", listener), ("reason", reason)]);
        ConnMetrics {
            open: metrics.gauge(catalogue::CONNECTIONS_OPEN, &[("listener", listener)]),
            limit: refused("limit"),
            tls_handshake: refused("tls_handshake"),
            not_tls: refused("not_tls"),
            header_timeout: refused("header_timeout"),
            body_timeout: refused("body_timeout"),
        }
    }
}

/// What protects one listener: its limits, its TLS certificate (if any) and its counters.
#[derive(Clone)]
pub struct Protection {
    listener: &'static str,
    limits: Arc<ConnLimits>,
    tls: Option<Arc<TlsSource>>,
    metrics: Arc<ConnMetrics>,
}

impl Protection {
    /// `listener` labels the metrics (`http`, `grpc`, `admin`).
    pub fn new(listener: &'static str, limits: Arc<ConnLimits>, tls: Option<Arc<TlsSource>>, metrics: &Metrics) -> Protection {
        Protection { listener, limits, tls, metrics: Arc::new(ConnMetrics::new(listener, metrics)) }
    }

    /// Plaintext with the default limits and no metrics (until a server is given its own).
    pub fn plain(listener: &'static str) -> Protection {
        Protection::new(listener, Arc::new(ConnLimits::default()), None, &Metrics::new(false))
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// A listening socket with its protection.
pub struct Listener {
    tcp: TcpListener,
    guard: Arc<Guard>,
}

struct Guard {
    protection: Protection,
    alpn: Alpn,
    slots: Arc<Semaphore>,
    /// When the connection limit, and a failing accept, were last reported in the log (at most every 10 s each).
    limit_logged: parking_lot::Mutex<Option<Instant>>,
    accept_logged: parking_lot::Mutex<Option<Instant>>,
}

impl Listener {
    pub fn new(tcp: TcpListener, protection: Protection, alpn: Alpn) -> Listener {
        let slots = Arc::new(Semaphore::new(protection.limits.max_connections));
        let guard = Guard { protection, alpn, slots, limit_logged: Default::default(), accept_logged: Default::default() };
        Listener { tcp, guard: Arc::new(guard) }
    }

    /// The next connection within the limit. Connections over `max_connections` are closed at once (the client sees
    /// the connection closed before an answer and may retry elsewhere), so they never wait in the backlog unnoticed.
    async fn accept(&self) -> Accepted {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, remote)) => match self.guard.slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = tcp.set_nodelay(true);
                        let m = &self.guard.protection.metrics;
                        m.open.increment(1.0);
                        return Accepted { tcp, remote, slot: Slot { _permit: permit, open: m.open.clone() } };
                    }
                    Err(_) => {
                        self.guard.protection.metrics.limit.increment(1);
                        if self.guard.report(&self.guard.limit_logged) {
                            tracing::warn!(
                                listener = self.guard.protection.listener,
                                max_connections = self.guard.protection.limits.max_connections,
                                "connection limit reached: new connections are closed at once"
                            );
                        }
                    }
                },
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning, and say so now and then.
                    if self.guard.report(&self.guard.accept_logged) {
                        tracing::warn!(listener = self.guard.protection.listener, error = %e, "accept failed; retrying every 100 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// One of the listener's `max_connections` places, held for the connection's life.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

struct Accepted {
    tcp: TcpStream,
    remote: SocketAddr,
    slot: Slot,
}

/// The peer of a connection; HTTP requests carry it as an extension (so does `axum::extract::ConnectInfo<SocketAddr>`).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The client's certificate (leaf), when it showed one that verified (mTLS).
    pub client_cert: Option<Arc<CertificateDer<'static>>>,
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The HTTP/2 connection preface a client sends first (gRPC included).
const H2_PREFACE_LEN: usize = 24;

impl Guard {
    /// Whether a recurring condition is due for a log line (at most one every 10 s).
    fn report(&self, last: &parking_lot::Mutex<Option<Instant>>) -> bool {
        let mut last = last.lock();
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Completes the TLS handshake (when the listener has TLS) within the handshake timeout.
    async fn establish(&self, accepted: Accepted) -> Option<ServerIo> {
        let Accepted { tcp, remote, slot } = accepted;
        let local = tcp.local_addr().ok();
        let metrics = &self.protection.metrics;
        let limits = &self.protection.limits;
        let (stream, h2, client_cert) = match &self.protection.tls {
            None => (Stream::Plain(tcp), self.alpn == Alpn::Grpc, None),
            Some(tls) => {
                let deadline = tokio::time::Instant::now() + tls.handshake_timeout();
                let mut first = [0u8; 1];
                match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
                    Ok(Ok(1)) => {}
                    // Closed without a byte (a TCP health check) or reset: nothing to count.
                    Ok(_) => return None,
                    Err(_) => {
                        metrics.tls_handshake.increment(1);
                        tracing::debug!(listener = self.protection.listener, %remote, "no TLS handshake within the handshake timeout");
                        return None;
                    }
                }
                if first[0] != TLS_HANDSHAKE_RECORD {
                    metrics.not_tls.increment(1);
                    tracing::debug!(listener = self.protection.listener, %remote, "plaintext on a TLS port: refused");
                    if self.alpn != Alpn::Grpc && first[0].is_ascii_uppercase() {
                        refuse_plain_http(tcp).await;
                    }
                    return None;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(self.alpn));
                match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let (_, session) = stream.get_ref();
                        let h2 = session.alpn_protocol() == Some(b"h2") || self.alpn == Alpn::Grpc;
                        let cert = session.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.clone().into_owned()));
                        (Stream::Tls(Box::new(stream)), h2, cert)
                    }
                    Ok(Err(e)) => {
                        metrics.tls_handshake.increment(1);
                        tracing::debug!(listener = self.protection.listener, %remote, error = %e, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        metrics.tls_handshake.increment(1);
                        tracing::debug!(listener = self.protection.listener, %remote, "TLS handshake timed out");
                        return None;
                    }
                }
            }
        };
        // An HTTP/2 client must send its preface within the header timeout (HTTP/1 heads are timed by HeadTimer).
        let preface = h2.then(|| Preface {
            needed: H2_PREFACE_LEN,
            deadline: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
            refused: metrics.header_timeout.clone(),
        });
        let peer = PeerInfo { remote, tls: self.protection.tls.is_some(), client_cert };
        Some(ServerIo { stream, peer, local, h2, activity: Arc::new(Activity::new()), preface, _slot: slot })
    }
}

/// Answers plain HTTP sent to a TLS port with a 400 that says so, instead of a TLS alert the client cannot show.
async fn refuse_plain_http(mut tcp: TcpStream) {
    let body = br#"{"error":"this port speaks HTTPS (TLS): the request was sent as plain HTTP; use https://"}"#;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        // Read what came with the request head first: closing with unread bytes resets the connection, and the client
        // might lose the answer.
        let mut buf = vec![0u8; 16 * 1024];
        let mut request = Vec::new();
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
            request.extend_from_slice(&buf[..n]);
            if n == 0 || request.windows(4).any(|w| w == b"\r\n\r\n") || request.len() >= 64 * 1024 {
                break;
            }
        }
        let _ = tcp.write_all(head.as_bytes()).await;
        let _ = tcp.write_all(body).await;
        let _ = tcp.shutdown().await;
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Bytes a new HTTP/2 connection must send within the header timeout.
struct Preface {
    needed: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    refused: Counter,
}

/// An accepted connection (TLS already negotiated), holding its place under the connection limit.
pub struct ServerIo {
    stream: Stream,
    peer: PeerInfo,
    local: Option<SocketAddr>,
    /// HTTP/2 (ALPN `h2`, or the gRPC listener).
    h2: bool,
    activity: Arc<Activity>,
    preface: Option<Preface>,
    _slot: Slot,
}

impl ServerIo {
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.activity.read_some();
                    if let Some(preface) = &mut this.preface {
                        preface.needed = preface.needed.saturating_sub(n);
                        if preface.needed == 0 {
                            this.preface = None;
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(preface) = &mut this.preface {
                    if preface.deadline.as_mut().poll(cx).is_ready() {
                        preface.refused.increment(1);
                        this.preface = None;
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface within the header read timeout")));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo { local_addr: self.local, remote_addr: Some(self.peer.remote) }
    }
}

/// When an HTTP/1 connection last started waiting for a request head, and when that head's first byte came.
struct Activity {
    base: Instant,
    /// Nanoseconds after `base` of the first byte read since the wait began; 0: none yet.
    first_byte: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { base: Instant::now(), first_byte: AtomicU64::new(0) }
    }

    fn read_some(&self) {
        if self.first_byte.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
            self.first_byte.store(nanos, Ordering::Relaxed);
        }
    }

    fn begin_wait(&self) {
        self.first_byte.store(0, Ordering::Relaxed);
    }

    fn first_byte(&self) -> Option<Instant> {
        match self.first_byte.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.base + Duration::from_nanos(nanos)),
        }
    }
}

/// hyper's HTTP/1 header-read timer, per connection. hyper starts it whenever the connection waits for a request head,
/// including while a keep-alive connection is idle; this timer tells the two apart: the first request's head must be
/// complete within `header_read_timeout` of the connection's start; later ones within `header_read_timeout` of their
/// first byte, and a connection with no byte of a next request is closed after `idle_timeout`.
///
/// hyper asks for a new sleep for every request head. They all share one tokio timer per connection, which is moved
/// only when it would fire too late: registering and removing a timer for every request of a keep-alive connection
/// was about 3 % of a forwarded request's CPU. When the shared timer fires early (the deadline moved on since), the
/// sleep just sets it again.
struct HeadTimer {
    activity: Arc<Activity>,
    header: Duration,
    idle: Duration,
    waits: AtomicU64,
    refused: Counter,
    shared: Arc<parking_lot::Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl HeadTimer {
    fn new(activity: Arc<Activity>, header: Duration, idle: Duration, refused: Counter) -> HeadTimer {
        let first = tokio::time::Instant::now() + header;
        let shared = Arc::new(parking_lot::Mutex::new(Box::pin(tokio::time::sleep_until(first))));
        HeadTimer { activity, header, idle, waits: AtomicU64::new(0), refused, shared }
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PlainSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let first = self.waits.fetch_add(1, Ordering::Relaxed) == 0;
        self.activity.begin_wait();
        Box::pin(HeadSleep {
            activity: self.activity.clone(),
            first,
            started: Instant::now(),
            header: self.header,
            idle: self.idle,
            shared: self.shared.clone(),
            refused: self.refused.clone(),
        })
    }
}

struct PlainSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for PlainSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}

struct HeadSleep {
    activity: Arc<Activity>,
    first: bool,
    started: Instant,
    header: Duration,
    idle: Duration,
    shared: Arc<parking_lot::Mutex<Pin<Box<tokio::time::Sleep>>>>,
    refused: Counter,
}

impl HeadSleep {
    fn target(&self) -> Instant {
        if self.first {
            return self.started + self.header;
        }
        match self.activity.first_byte() {
            Some(at) => at + self.header,
            None => self.started + self.idle,
        }
    }
}

impl Future for HeadSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut sleep = self.shared.lock();
        // The target is asked again after each firing: a byte may have moved it since.
        let target = || tokio::time::Instant::from_std(self.target());
        if lane::poll_sleep_until(sleep.as_mut(), cx, target).is_pending() {
            return Poll::Pending;
        }
        if self.first || self.activity.first_byte().is_some() {
            self.refused.increment(1);
            tracing::debug!("request head not received within the header read timeout: closing the connection");
        }
        Poll::Ready(())
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// Set when a request body timed out, so the answer can say 408.
#[derive(Clone)]
struct BodyTimeout {
    fired: Arc<AtomicBool>,
    counter: Counter,
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (server.body_read_timeout)")]
pub struct BodyTimedOut(pub Duration);

/// A request body that must arrive within `timeout` of the first attempt to read it. The timer starts only when the
/// body is not all there yet: most bodies come with their request head, and a timer per request costs a few percent
/// of a forwarded request's CPU.
struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    /// The first read that had to wait.
    started: Option<tokio::time::Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    signal: BodyTimeout,
}

impl<B> TimedBody<B> {
    fn expired(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.signal.fired.swap(true, Ordering::Relaxed) {
            self.signal.counter.increment(1);
        }
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout)))))
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.sleep.as_ref().is_some_and(|sleep| sleep.is_elapsed()) {
            return this.expired();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                // Timed from the first read that had to wait: a body that is all there never reads the clock.
                let deadline = *this.started.get_or_insert_with(tokio::time::Instant::now) + this.timeout;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => this.expired(),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What answers an HTTP listener's requests: an axum router, or a router with routes it dispatches itself
/// ([`super::http::DataPlane`]). `peer` is the connection's; a router gives it to handlers as request extensions.
pub trait HttpService: Clone + Send + Sync + 'static {
    fn call(&self, request: Request<axum::body::Body>, peer: &PeerInfo) -> impl Future<Output = axum::response::Response> + Send;

    /// The data plane's state, when this service's HTTP/1.1 connections may take Sluice's own lane ([`super::lane`]):
    /// it answers plain requests itself (inference on its fast route, the rest through [`HttpService::call`]) and hands
    /// anything unusual to hyper.
    fn http1_lane(&self) -> Option<&super::AppState> {
        None
    }
}

impl HttpService for axum::Router {
    fn call(&self, mut request: Request<axum::body::Body>, peer: &PeerInfo) -> impl Future<Output = axum::response::Response> + Send {
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer.remote));
        request.extensions_mut().insert(peer.clone());
        let oneshot = tower::ServiceExt::oneshot(self.clone(), request);
        async move { oneshot.await.unwrap_or_else(|never| match never {}) }
    }
}

/// Serves HTTP on `listener` with `router` until `shutdown` resolves; then stops accepting, lets open connections
/// finish their requests (idle ones are closed at once) and returns when they are done, or when `abort` resolves.
pub async fn serve_http(
    listener: Listener,
    router: impl HttpService,
    shutdown: impl Future<Output = ()>,
    abort: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = Arc::new(super::latch::Latch::new());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (guard, router, graceful) = (listener.guard.clone(), router.clone(), graceful.clone());
                connections.spawn(async move {
                    if let Some(io) = guard.establish(accepted).await {
                        serve_connection(&guard.protection, io, router, graceful).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // New connections are refused from here on; open ones finish what they are doing.
    drop(listener.tcp);
    graceful.set();
    tokio::pin!(abort);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { return Ok(()) },
            // Dropping the set closes the connections still open.
            _ = &mut abort => return Ok(()),
        }
    }
}

async fn serve_connection(protection: &Protection, mut io: ServerIo, service: impl HttpService, graceful: Arc<super::latch::Latch>) {
    let limits = &protection.limits;
    // Plain inference requests on HTTP/1.1 take the lane; hyper gets the connection at its first other request.
    let mut read_ahead = Bytes::new();
    if let (false, Some(state)) = (io.h2, service.http1_lane()) {
        let counters = LaneCounters { header_timeout: &protection.metrics.header_timeout, body_timeout: &protection.metrics.body_timeout };
        let peer = io.peer.clone();
        match lane::serve(&mut io, &service, state, &peer, limits, &counters, &graceful).await {
            LaneEnd::Closed => return,
            LaneEnd::HandOff(rest) => read_ahead = rest,
        }
    }
    let peer = io.peer.clone();
    let body_timeout = limits.body_read_timeout;
    let h1 = !io.h2;
    let timeouts = protection.metrics.body_timeout.clone();
    let peer = Arc::new(peer);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (service, peer) = (service.clone(), peer.clone());
        let signal = BodyTimeout { fired: Arc::new(AtomicBool::new(false)), counter: timeouts.clone() };
        let request = request.map(|body| axum::body::Body::new(TimedBody { inner: body, timeout: body_timeout, started: None, sleep: None, signal: signal.clone() }));
        async move {
            let response = service.call(request, &peer).await;
            if signal.fired.load(Ordering::Relaxed) {
                let message = BodyTimedOut(body_timeout).to_string();
                let mut response = ApiError::new(StatusCode::REQUEST_TIMEOUT, message).into_response();
                if h1 {
                    // The rest of the body is not read: the connection cannot carry another request.
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                return Ok::<_, Infallible>(response);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let io_remote = io.peer.remote;
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            // Biased: no random pick of the branch to poll first on every wake-up of the connection.
            let ended = tokio::select! {
                biased;
                ended = conn.as_mut() => ended,
                _ = graceful.wait() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(listener = protection.listener, remote = %io_remote, error = %e, "connection ended with an error");
            }
        }};
    }
    if io.h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(limits.keepalive_interval)
            .keep_alive_timeout(limits.keepalive_timeout);
        drive!(builder.serve_connection(TokioIo::new(Rewind::new(read_ahead, io)), service));
    } else {
        let timer = HeadTimer::new(io.activity.clone(), limits.header_read_timeout, limits.idle_timeout, protection.metrics.header_timeout.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(timer).header_read_timeout(limits.header_read_timeout).max_header_size(limits.max_header_bytes).keep_alive(true);
        drive!(builder.serve_connection(TokioIo::new(Rewind::new(read_ahead, io)), service));
    }
}

/// The gRPC listener's connections, TLS done and within the limits, for tonic's `serve_with_incoming_shutdown`.
/// Handshakes run side by side, off the accept loop. Dropping the stream (tonic does at shutdown) closes the socket.
pub fn incoming(listener: Listener) -> impl tokio_stream::Stream<Item = io::Result<ServerIo>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<ServerIo>>(64);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => {
                    let (guard, tx) = (listener.guard.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Some(io) = guard.establish(accepted).await {
                            let _ = tx.send(Ok(io)).await;
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A tower layer for tonic: every gRPC request message, once its first byte has come, must arrive whole within
/// `timeout`; a slower one fails the call with DEADLINE_EXCEEDED. Time between the messages of a stream is not limited.
#[derive(Clone)]
pub struct GrpcMessageTimeoutLayer {
    timeout: Duration,
    counter: Counter,
}

impl GrpcMessageTimeoutLayer {
    pub fn new(protection: &Protection) -> GrpcMessageTimeoutLayer {
        GrpcMessageTimeoutLayer { timeout: protection.limits.body_read_timeout, counter: protection.metrics.body_timeout.clone() }
    }
}

impl<S> tower::Layer<S> for GrpcMessageTimeoutLayer {
    type Service = GrpcMessageTimeout<S>;
    fn layer(&self, inner: S) -> GrpcMessageTimeout<S> {
        GrpcMessageTimeout { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMessageTimeout<S> {
    inner: S,
    layer: GrpcMessageTimeoutLayer,
}

impl<S> tower::Service<Request<tonic::body::Body>> for GrpcMessageTimeout<S>
where
    S: tower::Service<Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> S::Future {
        let (timeout, counter) = (self.layer.timeout, self.layer.counter.clone());
        self.inner.call(request.map(|body| tonic::body::Body::new(GrpcTimedBody::new(body, timeout, counter))))
    }
}

/// A gRPC request body whose messages (5-byte prefix: flag, big-endian length; then the message) are timed one by one.
struct GrpcTimedBody<B> {
    inner: B,
    timeout: Duration,
    /// Running while a message is partly received.
    sleep: Pin<Box<tokio::time::Sleep>>,
    in_message: bool,
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: u64,
    counter: Counter,
}

impl<B> GrpcTimedBody<B> {
    fn new(inner: B, timeout: Duration, counter: Counter) -> GrpcTimedBody<B> {
        GrpcTimedBody {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            in_message: false,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            counter,
        }
    }

    /// Follows the message framing through `data`.
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= take as u64;
                data = &data[take..];
                if self.remaining == 0 {
                    self.end_message();
                }
                continue;
            }
            if self.prefix_len == 0 {
                self.in_message = true;
                let deadline = tokio::time::Instant::now() + self.timeout;
                self.sleep.as_mut().reset(deadline);
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == 5 {
                self.remaining = u64::from(u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]));
                if self.remaining == 0 {
                    self.end_message();
                }
            }
        }
    }

    fn end_message(&mut self) {
        self.in_message = false;
        self.prefix_len = 0;
    }

    fn expired(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.counter.increment(1);
        self.in_message = false;
        let status = tonic::Status::deadline_exceeded(format!(
            "a request message did not arrive within {:?} of its first byte (server.body_read_timeout)",
            self.timeout
        ));
        Poll::Ready(Some(Err(Box::new(status))))
    }
}

impl<B> Body for GrpcTimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.in_message && this.sleep.is_elapsed() {
            return this.expired();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.advance(data.chunk());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|f| f.map_err(Into::into))),
            Poll::Pending if this.in_message && this.sleep.as_mut().poll(cx).is_ready() => this.expired(),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn frames(chunks: &[&[u8]]) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks.iter().map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        http_body_util::StreamBody::new(tokio_stream::iter(frames))
    }

    #[tokio::test]
    async fn grpc_framing_is_followed_across_frames() {
        // Two messages (3 bytes, then empty), split at awkward places.
        let mut body = GrpcTimedBody::new(frames(&[&[0, 0], &[0, 0, 3, b'a'], &[b'b', b'c', 0, 0, 0], &[0, 0]]), Duration::from_secs(5), Counter::noop());
        let mut states = Vec::new();
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            states.push((body.in_message, body.remaining));
        }
        assert_eq!(states, vec![(true, 0), (true, 2), (true, 0), (false, 0)]);
    }

    #[tokio::test]
    async fn a_stalled_message_times_out_and_idle_streams_do_not() {
        // Half a message, then nothing: DEADLINE_EXCEEDED.
        let (mut tx, rx) = futures_channel();
        let mut body = GrpcTimedBody::new(rx, Duration::from_millis(50), Counter::noop());
        tx.push(Bytes::from_static(&[0, 0, 0, 0, 9, 1]));
        body.frame().await.unwrap().unwrap();
        let err = body.frame().await.unwrap().unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        // A whole message, then a quiet stream: no timeout while nothing is half-received.
        let (mut tx, rx) = futures_channel();
        let mut body = GrpcTimedBody::new(rx, Duration::from_millis(50), Counter::noop());
        tx.push(Bytes::from_static(&[0, 0, 0, 0, 1, 7]));
        body.frame().await.unwrap().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), body.frame()).await.is_err(), "an idle stream timed out");
    }

    #[tokio::test]
    async fn a_slow_http_body_times_out() {
        let (mut tx, rx) = futures_channel();
        let signal = BodyTimeout { fired: Arc::new(AtomicBool::new(false)), counter: Counter::noop() };
        let mut body = TimedBody { inner: rx, timeout: Duration::from_millis(50), started: None, sleep: None, signal: signal.clone() };
        tx.push(Bytes::from_static(b"{"));
        body.frame().await.unwrap().unwrap();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("body_read_timeout"), "{err}");
        assert!(signal.fired.load(Ordering::Relaxed));
    }

    /// A body fed by hand that never ends.
    struct Feed(std::collections::VecDeque<Bytes>);

    struct Sender(Arc<parking_lot::Mutex<Feed>>);

    impl Sender {
        fn push(&mut self, bytes: Bytes) {
            self.0.lock().0.push_back(bytes);
        }
    }

    struct Receiver(Arc<parking_lot::Mutex<Feed>>);

    impl Body for Receiver {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.lock().0.pop_front() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                // The timeout's own timer wakes the task.
                None => Poll::Pending,
            }
        }
    }

    fn futures_channel() -> (Sender, Receiver) {
        let feed = Arc::new(parking_lot::Mutex::new(Feed(Default::default())));
        (Sender(feed.clone()), Receiver(feed))
    }
}
