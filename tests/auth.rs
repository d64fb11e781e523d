//! Authentication end to end: missing, wrong and right keys on every route of the HTTP data port, the gRPC services
//! and the admin port; data keys refused on the admin port and admin keys on the data ports; per-tenant rate limits
//! (429 + Retry-After); health probes open; the tenant counted in metrics; a public admin address refused at start.

use crate::common::*;
use hyper::StatusCode;
use serde_json::json;
use sluice::admission::auth::hash_key;
use sluice::config::{Config, Scope, TenantConfig};
use sluice::protocol::grpc::pb;
use sluice::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::metadata::MetadataValue;

const APP_KEY: &str = "app-secret-1";
const OPS_KEY: &str = "ops-secret-1";
const SLOW_KEY: &str = "slow-secret-1";

async fn start() -> Server {
    let mut config = Config::default();
    config.server.models = TempRepo::new().link("identity").dir.keep();
    config.auth.enabled = true;
    config.auth.tenants = vec![
        TenantConfig { name: "apps".into(), key_sha256: vec![hash_key(APP_KEY)], ..TenantConfig::default() },
        TenantConfig { name: "ops".into(), key_sha256: vec![hash_key(OPS_KEY)], scopes: vec![Scope::Admin], ..TenantConfig::default() },
        TenantConfig { name: "slow".into(), key_sha256: vec![hash_key(SLOW_KEY)], rate_limit: 1.0, burst: Some(3.0), ..TenantConfig::default() },
    ];
    start_with(config, None).await
}

fn infer_body() -> serde_json::Value {
    json!({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": vec![0.5f32; 256]}]})
}

/// Every data-plane route: (method, path).
const DATA_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v2"),
    ("GET", "/v2/models/stats"),
    ("GET", "/v2/models/identity"),
    ("GET", "/v2/models/identity/versions/1"),
    ("GET", "/v2/models/identity/ready"),
    ("GET", "/v2/models/identity/versions/1/ready"),
    ("GET", "/v2/models/identity/config"),
    ("GET", "/v2/models/identity/versions/1/config"),
    ("GET", "/v2/models/identity/stats"),
    ("GET", "/v2/models/identity/versions/1/stats"),
    ("POST", "/v2/models/identity/infer"),
    ("POST", "/v2/models/identity/versions/1/infer"),
];

async fn call(server: &Server, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let method = hyper::Method::from_bytes(method.as_bytes()).expect("method");
    let body = if method == hyper::Method::POST { bytes::Bytes::from(infer_body().to_string()) } else { bytes::Bytes::new() };
    server.request(method, path, &all, body).await
}

#[tokio::test]
async fn every_data_route_needs_a_data_key() {
    let server = start().await;
    let bearer = format!("Bearer {APP_KEY}");
    for &(method, path) in DATA_ROUTES {
        let r = call(&server, method, path, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path} without a key: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(r.error().contains("authentication required"), "{}", r.error());
        let r = call(&server, method, path, &[("authorization", "Bearer not-a-key")]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path} with a wrong key");
        assert!(r.error().contains("not valid"));
        let r = call(&server, method, path, &[("authorization", &format!("Bearer {OPS_KEY}"))]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path} with an admin-only key");
        let r = call(&server, method, path, &[("authorization", &bearer)]).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path} with the right key: {}", String::from_utf8_lossy(&r.body));
        let r = call(&server, method, path, &[("x-api-key", APP_KEY)]).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path} with x-api-key");
    }
    // Health probes stay open.
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(server.get(path).await.status, StatusCode::OK, "{path}");
    }
    // A `Basic` header is not a bearer token.
    let r = call(&server, "GET", "/v2", &[("authorization", &format!("Basic {APP_KEY}"))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_admin_port_needs_an_admin_key() {
    let server = start().await;
    let admin = server.admin_addr.expect("admin");
    let client = client();
    for path in ["/metrics", "/scaling", "/scaling/identity"] {
        for (key, expected) in [(None, StatusCode::UNAUTHORIZED), (Some("wrong"), StatusCode::UNAUTHORIZED), (Some(APP_KEY), StatusCode::FORBIDDEN), (Some(OPS_KEY), StatusCode::OK)] {
            let mut req = hyper::Request::get(format!("http://{admin}{path}"));
            if let Some(key) = key {
                req = req.header("authorization", format!("Bearer {key}"));
            }
            let r = client.request(req.body(http_body_util::Full::new(bytes::Bytes::new())).expect("request")).await.expect("admin answer");
            assert_eq!(r.status(), expected, "{path} with {key:?}");
        }
    }
}

#[tokio::test]
async fn grpc_needs_a_key_and_health_stays_open() {
    let server = start().await;
    let url = format!("http://{}", server.grpc_addr);
    let mut client = GrpcInferenceServiceClient::connect(url.clone()).await.expect("connect");
    let with_key = |key: &str, mut req: tonic::Request<pb::ServerReadyRequest>| {
        req.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {key}")).expect("metadata"));
        req
    };
    let status = client.server_ready(pb::ServerReadyRequest {}).await.expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = client.server_ready(with_key("wrong", tonic::Request::new(pb::ServerReadyRequest {}))).await.expect_err("wrong key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = client.server_ready(with_key(OPS_KEY, tonic::Request::new(pb::ServerReadyRequest {}))).await.expect_err("admin key");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(client.server_ready(with_key(APP_KEY, tonic::Request::new(pb::ServerReadyRequest {}))).await.expect("right key").get_ref().ready);
    let mut infer = tonic::Request::new(pb::ModelInferRequest {
        model_name: "identity".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 256],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes::Bytes::from(vec![0u8; 1024])],
        ..Default::default()
    });
    infer.metadata_mut().insert("x-api-key", MetadataValue::try_from(APP_KEY).expect("metadata"));
    client.model_infer(infer).await.expect("inference with x-api-key");
    // grpc.health.v1 needs no key, so Kubernetes gRPC probes work.
    let channel = tonic::transport::Channel::from_shared(url).expect("url").connect().await.expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health check");
    assert_eq!(r.get_ref().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_and_others_do_not() {
    let server = start().await;
    let slow = format!("Bearer {SLOW_KEY}");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call(&server, "POST", "/v2/models/identity/infer", &[("authorization", &slow)]).await);
    }
    let ok = statuses.iter().filter(|r| r.status == StatusCode::OK).count();
    let limited: Vec<&Reply> = statuses.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!((3..=4).contains(&ok), "burst 3 at 1/s: {ok} of 6 admitted");
    assert_eq!(ok + limited.len(), 6);
    assert_eq!(limited[0].header("retry-after"), Some("1"));
    assert!(limited[0].error().contains("rate limit"), "{}", limited[0].error());
    // Another tenant is not affected.
    for _ in 0..5 {
        let r = call(&server, "POST", "/v2/models/identity/infer", &[("authorization", &format!("Bearer {APP_KEY}"))]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let admin = server.admin_addr.expect("admin");
    let req = hyper::Request::get(format!("http://{admin}/metrics"))
        .header("authorization", format!("Bearer {OPS_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let r = client().request(req).await.expect("metrics");
    let text = String::from_utf8_lossy(&http_body_util::BodyExt::collect(r.into_body()).await.expect("body").to_bytes()).to_string();
    assert!(text.contains("sluice_auth_rejected_total{reason=\"rate_limited\",tenant=\"slow\"}"), "{text}");
    assert!(text.contains("sluice_tenant_requests_total{tenant=\"apps\",plane=\"data\"} 5"), "{text}");
}

#[tokio::test]
async fn a_public_admin_address_needs_auth_or_an_explicit_opt_in() {
    let mut config = Config::default();
    config.server.models = TempRepo::new().link("identity").dir.keep();
    config.server.http = "127.0.0.1:0".parse().expect("addr");
    config.server.grpc = "127.0.0.1:0".parse().expect("addr");
    config.scaling.keda.enabled = false;
    config.admin.listen = "0.0.0.0:0".parse().expect("addr");
    let err = sluice::app::start(&config, std::future::pending::<()>()).await.err().expect("refused");
    assert!(err.to_string().contains("admin.listen"), "{err}");
    config.admin.public = true;
    let running = sluice::app::start(&config, std::future::pending::<()>()).await.expect("explicit opt-in starts");
    running.shutdown().await.expect("stop");
}
