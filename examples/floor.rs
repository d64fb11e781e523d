use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sluice::backend::remote::h1::Connections;
use std::sync::Arc;
use std::time::Duration;
#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[tokio::main]
async fn main() {
    let upstream = std::env::args().nth(1).unwrap();
    let conns = Arc::new(Connections::new(&upstream, Duration::from_secs(1), Duration::from_secs(90), 64));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("floor listening {}", l.local_addr().unwrap());
    loop {
        let (s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let conns = conns.clone();
        let up = upstream.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let conns = conns.clone();
                let up = up.clone();
                async move {
                    let path = req.uri().path().to_string();
                    if req.method() == hyper::Method::GET {
                        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
                        let r = c.get(format!("http://{up}{path}").parse().unwrap()).await.unwrap();
                        let st = r.status();
                        let b = r.into_body().collect().await.unwrap().to_bytes();
                        return Ok::<_, std::convert::Infallible>(Response::builder().status(st).header("content-type", "application/json").body(Full::new(b)).unwrap());
                    }
                    let hl = req.headers().get("inference-header-content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let a = conns.post(&path, hl, &body, 1 << 26).await.unwrap();
                    let mut r = Response::builder().status(a.status).header("content-type", "application/octet-stream");
                    if let Some(h) = a.header_length { r = r.header("inference-header-content-length", h); }
                    Ok::<_, std::convert::Infallible>(r.body(Full::new(a.body)).unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
        });
    }
}
