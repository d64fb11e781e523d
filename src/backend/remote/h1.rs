//! Inference requests to one HTTP endpoint over plain HTTP/1.1 keep-alive connections that the request's own task
//! drives: take an idle connection (or connect), write head and body in one vectored write, read the answer.
//!
//! Why not the general-purpose hyper client used for health and metadata: every request through it crosses two task
//! hand-offs (into the pooled connection's task and back) and a pool keyed by URI authority. On the gateway's hot
//! path that was a measurable share of its CPU per request (docs/BENCHMARKS.md, "proxy overhead"); this client does
//! the same I/O — the same syscalls — with none of the hand-offs.
//!
//! It speaks just what V2 inference needs: `POST` with a `Content-Length` body, and answers framed by
//! `Content-Length`, `Transfer-Encoding: chunked`, or the connection's end. A connection is reused only after a
//! complete answer that did not ask to close it; a request that is cancelled (the caller's timeout) drops its
//! connection, so no half-read answer can reach a later request.

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use std::time::{Duration, Instant};
use crate::protocol::http1::write_all_vectored;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Most header lines an answer may carry.
const MAX_HEADERS: usize = 64;
/// Largest answer head (status line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read buffer to start with: a small V2 answer fits in one read.
const READ_CHUNK: usize = 8 * 1024;

/// Why an exchange failed; the transport turns it into an attempt error.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Nothing was sent: connecting failed or timed out.
    #[error("cannot connect to {address}: {message}")]
    Connect { address: String, message: String },
    /// The connection failed after the request was (maybe partly) written: the upstream may have seen it.
    #[error("{0}")]
    Broken(String),
    /// The upstream answered something that is not a valid HTTP/1.1 answer (or one over the size limit).
    #[error("{0}")]
    Malformed(String),
}

/// An answer: status, the headers the gateway reads, and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub header_length: Option<String>,
    pub retry_after: Option<String>,
    pub body: Bytes,
}

struct Idle {
    stream: TcpStream,
    /// The connection's read buffer: empty, with the spare room left after the last answer's body was split off
    /// (several small answers share one allocation this way).
    buf: BytesMut,
    since: Instant,
}

/// The keep-alive connections to one endpoint.
pub struct Connections {
    address: String,
    /// Header lines every request carries (the gateway's credentials), each ending in CRLF.
    extra_headers: Vec<u8>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

impl Connections {
    /// `extra_headers`: lines every request carries, each ending in CRLF (empty: none).
    pub fn new(address: &str, extra_headers: Vec<u8>, connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Connections {
        Connections { address: address.to_string(), extra_headers, connect_timeout, idle_timeout, max_idle, idle: Mutex::new(Vec::new()) }
    }

    /// Sends `POST path` with `body` and reads the whole answer (a body over `max_body` bytes is refused).
    pub async fn post(&self, path: &str, header_length: Option<usize>, body: &Bytes, max_body: usize) -> Result<Answer, ExchangeError> {
        let (mut stream, mut buf) = match self.checkout() {
            Some(idle) => idle,
            None => (self.connect().await?, BytesMut::new()),
        };
        let head = request_head(path, &self.address, &self.extra_headers, header_length, body.len());
        write_all_vectored(&mut stream, &head, body).await.map_err(|e| ExchangeError::Broken(format!("cannot send the request: {e}")))?;
        let (answer, reusable) = read_answer(&mut stream, &mut buf, max_body).await?;
        if reusable {
            self.checkin(stream, buf);
        }
        Ok(answer)
    }

    /// Closes connections idle for longer than the idle timeout (called from the pool's periodic upkeep).
    pub fn prune(&self) {
        let timeout = self.idle_timeout;
        self.idle.lock().retain(|c| c.since.elapsed() < timeout);
    }

    /// The most recently used idle connection that is still open. A connection the upstream closed while idle
    /// reads as end-of-stream (or stray bytes) here and is dropped, before the request could be lost on it.
    fn checkout(&self) -> Option<(TcpStream, BytesMut)> {
        loop {
            let idle = self.idle.lock().pop()?;
            if idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            let mut probe = [0u8; 1];
            match idle.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some((idle.stream, idle.buf)),
                _ => continue,
            }
        }
    }

    fn checkin(&self, stream: TcpStream, buf: BytesMut) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle { stream, buf, since: Instant::now() });
        }
    }

    async fn connect(&self) -> Result<TcpStream, ExchangeError> {
        let failed = |message: String| ExchangeError::Connect { address: self.address.clone(), message };
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed(format!("no connection within {:?}", self.connect_timeout))),
        };
        // A connect to a loopback port nobody listens on can, rarely, pick that very port as its own source port and
        // connect to itself (TCP simultaneous open): it would then hold the port the worker restarts on.
        if matches!((stream.local_addr(), stream.peer_addr()), (Ok(local), Ok(peer)) if local == peer) {
            return Err(failed("connected to itself (nobody listens on that port)".into()));
        }
        stream.set_nodelay(true).map_err(|e| failed(format!("cannot set TCP_NODELAY: {e}")))?;
        Ok(stream)
    }
}

fn request_head(path: &str, host: &str, extra_headers: &[u8], header_length: Option<usize>, body_length: usize) -> Vec<u8> {
    // Assembled by hand: `write!` costs a few times more, and this runs for every forwarded request.
    let mut numbers = itoa::Buffer::new();
    let mut head = Vec::with_capacity(160 + path.len() + host.len() + extra_headers.len());
    // A body with the binary extension is not JSON as a whole.
    let content_type: &[u8] = if header_length.is_some() { b"application/octet-stream" } else { b"application/json" };
    for part in [b"POST ", path.as_bytes(), b" HTTP/1.1\r\nhost: ", host.as_bytes(), b"\r\ncontent-type: ", content_type, b"\r\ncontent-length: "] {
        head.extend_from_slice(part);
    }
    head.extend_from_slice(numbers.format(body_length).as_bytes());
    head.extend_from_slice(b"\r\n");
    if let Some(n) = header_length {
        head.extend_from_slice(b"inference-header-content-length: ");
        head.extend_from_slice(numbers.format(n).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(extra_headers);
    head.extend_from_slice(b"\r\n");
    head
}

/// How an answer's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads one answer into `buf` (empty on entry); also says whether the connection can carry another request.
async fn read_answer(stream: &mut TcpStream, buf: &mut BytesMut, max_body: usize) -> Result<(Answer, bool), ExchangeError> {
    let (status, framing, mut keep_alive, header_length, retry_after) = loop {
        if read_more(stream, buf).await? == 0 {
            let what = if buf.is_empty() { "the upstream closed the connection without answering" } else { "the upstream closed the connection in the middle of the answer's head" };
            return Err(ExchangeError::Broken(what.into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf[..]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let parsed = parse_head(&response)?;
                buf.advance(head_len);
                break parsed;
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(ExchangeError::Malformed(format!("the answer's head is over {MAX_HEAD_BYTES} bytes")));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(ExchangeError::Malformed(format!("not an HTTP/1.1 answer: {e}"))),
        }
    };
    let too_large = || ExchangeError::Malformed(format!("answer larger than {max_body} bytes"));
    let body = match framing {
        Framing::Length(n) => {
            if n > max_body {
                return Err(too_large());
            }
            if buf.len() < n {
                buf.reserve(n - buf.len());
            }
            while buf.len() < n {
                if read_more(stream, buf).await? == 0 {
                    return Err(ExchangeError::Broken(format!("answer cut off after {} of {n} body bytes", buf.len())));
                }
            }
            let body = buf.split_to(n).freeze();
            // Bytes past the answer were never asked for: the connection is out of step, so it is not reused.
            keep_alive &= buf.is_empty();
            body
        }
        Framing::Chunked => {
            let body = read_chunked(stream, buf, max_body).await?;
            keep_alive &= buf.is_empty();
            body
        }
        Framing::UntilClose => {
            keep_alive = false;
            while read_more(stream, buf).await? > 0 {
                if buf.len() > max_body {
                    return Err(too_large());
                }
            }
            buf.split().freeze()
        }
    };
    Ok((Answer { status, header_length, retry_after, body }, keep_alive))
}

type Head = (u16, Framing, bool, Option<String>, Option<String>);

fn parse_head(response: &httparse::Response) -> Result<Head, ExchangeError> {
    let status = response.code.ok_or_else(|| ExchangeError::Malformed("the answer has no status".into()))?;
    let mut keep_alive = response.version == Some(1);
    let (mut length, mut chunked, mut header_length, mut retry_after) = (None, false, None, None);
    for h in response.headers.iter() {
        let value = || std::str::from_utf8(h.value).map(str::trim).map_err(|_| ExchangeError::Malformed(format!("header '{}' is not ASCII", h.name)));
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value()?.parse::<usize>().map_err(|_| ExchangeError::Malformed("bad Content-Length in the answer".into()))?;
            if length.is_some_and(|m| m != n) {
                return Err(ExchangeError::Malformed("the answer has two different Content-Length headers".into()));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = value()?;
            if !v.eq_ignore_ascii_case("chunked") {
                return Err(ExchangeError::Malformed(format!("unsupported Transfer-Encoding '{v}' in the answer")));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value()?;
            if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("keep-alive")) {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("inference-header-content-length") {
            header_length = Some(value()?.to_string());
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value()?.to_string());
        }
    }
    // 1xx, 204 and 304 carry no body (RFC 9112 §6.3); a V2 server sends none of them: interim answers are refused,
    // the others framed as empty.
    if (100..200).contains(&status) {
        return Err(ExchangeError::Malformed(format!("unexpected interim answer {status}")));
    }
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        if length.is_some() {
            return Err(ExchangeError::Malformed("the answer has both Content-Length and Transfer-Encoding".into()));
        }
        Framing::Chunked
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok((status, framing, keep_alive, header_length, retry_after))
}

/// Reads what the socket has into `buf` (growing it when full); 0 means end of stream.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<usize, ExchangeError> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK.max(buf.len()));
    }
    stream.read_buf(buf).await.map_err(|e| ExchangeError::Broken(format!("reading the answer failed: {e}")))
}

/// Decodes a chunked body (chunk extensions ignored, trailers read and dropped).
async fn read_chunked(stream: &mut TcpStream, buf: &mut BytesMut, max_body: usize) -> Result<Bytes, ExchangeError> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| ExchangeError::Malformed(format!("bad chunk size '{size_text}' in the answer")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(body.freeze());
        }
        if body.len() + size > max_body {
            return Err(ExchangeError::Malformed(format!("answer larger than {max_body} bytes")));
        }
        while buf.len() < size + 2 {
            if read_more(stream, buf).await? == 0 {
                return Err(ExchangeError::Broken("answer cut off inside a chunk".into()));
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(ExchangeError::Malformed("a chunk of the answer does not end with CRLF".into()));
        }
        buf.advance(size + 2);
    }
}

/// One CRLF-terminated line (without the CRLF), at most 4 KiB.
async fn read_line(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<String, ExchangeError> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..at]).into_owned();
            buf.advance(at + 2);
            return Ok(line);
        }
        if buf.len() > 4096 {
            return Err(ExchangeError::Malformed("a chunk header line of the answer is over 4 KiB".into()));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(ExchangeError::Broken("answer cut off in a chunk header".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A server that answers each request it reads with the next of `answers` (raw bytes), on as many connections
    /// as it takes, and stops after the last answer; returns its address and how many connections it accepted.
    async fn serve(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let mut accepted = 0;
            let mut answers = answers.into_iter();
            'outer: while let Ok((mut socket, _)) = listener.accept().await {
                accepted += 1;
                loop {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read one request: head, then Content-Length bytes.
                    let body_end = loop {
                        let Ok(n) = socket.read(&mut chunk).await else { continue 'outer };
                        if n == 0 {
                            continue 'outer;
                        }
                        request.extend_from_slice(&chunk[..n]);
                        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&request[..at]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            break at + 4 + length;
                        }
                    };
                    while request.len() < body_end {
                        let Ok(n) = socket.read(&mut chunk).await else { continue 'outer };
                        if n == 0 {
                            continue 'outer;
                        }
                        request.extend_from_slice(&chunk[..n]);
                    }
                    let Some(answer) = answers.next() else { break 'outer };
                    if socket.write_all(answer).await.is_err() {
                        continue 'outer;
                    }
                    if answers.len() == 0 {
                        break 'outer;
                    }
                    if answer.windows(17).any(|w| w.eq_ignore_ascii_case(b"connection: close")) {
                        continue 'outer;
                    }
                }
            }
            accepted
        });
        (address, task)
    }

    fn connections(address: &str) -> Connections {
        Connections::new(address, Vec::new(), Duration::from_secs(1), Duration::from_secs(30), 4)
    }

    #[tokio::test]
    async fn content_length_answers_reuse_the_connection() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ninference-header-content-length: 2\r\ncontent-length: 6\r\n\r\n{}abcd";
        let (address, server) = serve(vec![ok, ok, ok]).await;
        let c = connections(&address);
        for _ in 0..3 {
            let answer = c.post("/v2/models/m/infer", Some(2), &Bytes::from_static(b"{}xy"), 1024).await.expect("answer");
            assert_eq!(answer.status, 200);
            assert_eq!(answer.header_length.as_deref(), Some("2"));
            assert_eq!(&answer.body[..], b"{}abcd");
        }
        drop(c);
        assert_eq!(server.await.expect("server"), 1, "three requests should share one connection");
    }

    #[tokio::test]
    async fn chunked_answers_are_reassembled() {
        let chunked: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\n{\"er\r\nc\r\nror\":\"busy\"}\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (address, _server) = serve(vec![chunked]).await;
        let answer = connections(&address).post("/p", None, &Bytes::new(), 1024).await.expect("answer");
        assert_eq!(answer.status, 429);
        assert_eq!(answer.retry_after.as_deref(), Some("3"));
        assert_eq!(&answer.body[..], br#"{"error":"busy"}"#);
    }

    #[tokio::test]
    async fn connection_close_is_honoured_and_the_next_request_reconnects() {
        let closing: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        let (address, server) = serve(vec![closing, closing]).await;
        let c = connections(&address);
        for _ in 0..2 {
            let answer = c.post("/p", None, &Bytes::new(), 1024).await.expect("answer");
            assert_eq!(&answer.body[..], b"ok");
        }
        drop(c);
        assert_eq!(server.await.expect("server"), 2);
    }

    #[tokio::test]
    async fn bad_answers_are_malformed_or_broken() {
        let cases: Vec<(&'static [u8], &str)> = vec![
            (b"garbage\r\n\r\n", "not an HTTP/1.1 answer"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n", "larger than"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", "two different Content-Length"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        ];
        for (raw, expected) in cases {
            let (address, _server) = serve(vec![raw]).await;
            let err = connections(&address).post("/p", None, &Bytes::new(), 1024).await.expect_err("should fail");
            assert!(matches!(err, ExchangeError::Malformed(_)), "{raw:?}: {err:?}");
            assert!(err.to_string().contains(expected), "{raw:?}: {err}");
        }
        // Cut off in the body: the upstream may have run the request.
        let (address, _server) = serve(vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 10\r\n\r\nabc"]).await;
        let err = connections(&address).post("/p", None, &Bytes::new(), 1024).await.expect_err("should fail");
        assert!(matches!(err, ExchangeError::Broken(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let err = connections(&address).post("/p", None, &Bytes::new(), 1024).await.expect_err("nobody listens");
        assert!(matches!(err, ExchangeError::Connect { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_upstream_is_not_reused() {
        // The server answers once and closes without saying so: the next request must use a new connection
        // instead of failing on the dead one.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut chunk = [0u8; 1024];
                let _ = socket.read(&mut chunk).await;
                socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
                socket.flush().await.expect("flush");
                drop(socket);
            }
        });
        let c = connections(&address);
        c.post("/p", None, &Bytes::new(), 1024).await.expect("first");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = c.post("/p", None, &Bytes::new(), 1024).await.expect("second, on a new connection");
        assert_eq!(&answer.body[..], b"ok");
        server.await.expect("server");
    }
}
