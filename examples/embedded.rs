//! Runs Sluice inside your own program: loads the demo models, serves V2 HTTP on a free port, sends one inference
//! request to itself over the network, prints the answer and shuts down.
//!
//!     bash scripts/setup.sh && cargo run --example embedded

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice::config::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.server.http = "127.0.0.1:0".parse()?;
    config.server.grpc = "127.0.0.1:0".parse()?;
    config.server.models = concat!(env!("CARGO_MANIFEST_DIR"), "/models").into();
    let running = sluice::app::start(&config, std::future::pending()).await?;
    println!("serving on {}", running.http_addr);

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = serde_json::json!({
        "id": "example-1",
        "inputs": [{ "name": "x", "shape": [8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8] }]
    });
    let request = hyper::Request::post(format!("http://{}/v2/models/fixed_affine/infer", running.http_addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    println!("{status} {}", String::from_utf8_lossy(&bytes));

    running.shutdown().await?;
    Ok(())
}
