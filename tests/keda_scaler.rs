//! KEDA's external scaler against the real server (127.0.0.1, port 0), through the client generated from
//! `proto/externalscaler.proto`: the spec's name and targets, idle values, the exact error codes, UNIMPLEMENTED for
//! `StreamMetricSpec`, health on the scaler listener, StreamIsActive pushing false → true → false around one request,
//! and open streams (StreamIsActive and a health Watch) ending when the server shuts down instead of holding it.

use crate::common::*;
use serde_json::json;
use sluice::scaling::keda::pb::external_scaler_client::ExternalScalerClient;
use sluice::scaling::keda::pb::{GetMetricSpecResponse, GetMetricsRequest, ScaledObjectRef};
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Every await on the server is bounded: a hang fails the test instead of stalling the suite.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut).await.unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
}

async fn channel(server: &Server) -> Channel {
    let addr = server.scaler_addr.expect("the scaler is enabled by default");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    within("scaler connect", endpoint.connect()).await.expect("scaler connect")
}

/// A ScaledObjectRef as KEDA sends it: the trigger's whole metadata, `scalerAddress` included.
fn object(pairs: &[(&str, &str)]) -> ScaledObjectRef {
    let mut meta: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    meta.insert("scalerAddress".into(), "sluice-scaler:9100".into());
    ScaledObjectRef { name: "so".into(), namespace: "ml".into(), scaler_metadata: meta }
}

/// One error case: trigger metadata, the expected code, and fragments its message must contain.
type ErrorCase = (&'static [(&'static str, &'static str)], Code, &'static [&'static str]);

fn spec(resp: GetMetricSpecResponse) -> (String, f64, i64) {
    assert_eq!(resp.metric_specs.len(), 1, "{resp:?}");
    let s = &resp.metric_specs[0];
    (s.metric_name.clone(), s.target_size_float, s.target_size)
}

#[tokio::test]
async fn spec_values_and_errors() {
    let server = start_repo(TempRepo::new().link("identity")).await;
    let mut client = ExternalScalerClient::new(channel(&server).await);

    let s = spec(within("spec", client.get_metric_spec(object(&[]))).await.unwrap().into_inner());
    assert_eq!(s, ("sluice-all-desired-replicas".to_string(), 1.0, 1));
    let s = spec(within("spec", client.get_metric_spec(object(&[("model", "identity"), ("metric", "queue_requests"), ("target", "7.2")]))).await.unwrap().into_inner());
    assert_eq!(s, ("sluice-identity-queue-requests".to_string(), 7.2, 8));

    // Idle: inactive and 0; the answer names the metric KEDA asked for; a request without a ref means the defaults.
    assert!(!within("active", client.is_active(object(&[("model", "identity")]))).await.unwrap().into_inner().result);
    let req = GetMetricsRequest { scaled_object_ref: Some(object(&[("model", "identity"), ("metric", "arrival_rate")])), metric_name: "s0-x".into() };
    let values = within("metrics", client.get_metrics(req)).await.unwrap().into_inner().metric_values;
    assert_eq!(values.len(), 1);
    assert_eq!((values[0].metric_name.as_str(), values[0].metric_value, values[0].metric_value_float), ("s0-x", 0, 0.0));
    let values = within("metrics", client.get_metrics(GetMetricsRequest::default())).await.unwrap().into_inner().metric_values;
    assert_eq!((values[0].metric_name.as_str(), values[0].metric_value), ("sluice-all-desired-replicas", 0));

    // Errors, on every RPC.
    let cases: [ErrorCase; 3] = [
        (&[("model", "nope")], Code::NotFound, &["'nope'", "identity"]),
        (&[("target", "-2")], Code::InvalidArgument, &["target", "'-2'"]),
        (&[("metric", "rows")], Code::InvalidArgument, &["'rows'", "in_flight"]),
    ];
    for (meta, code, fragments) in cases {
        let check = |what: &str, status: tonic::Status| {
            assert_eq!(status.code(), code, "{what} {meta:?}: {status:?}");
            for f in fragments {
                assert!(status.message().contains(f), "{what} {meta:?}: {f:?} not in {:?}", status.message());
            }
        };
        check("GetMetricSpec", within("spec", client.get_metric_spec(object(meta))).await.unwrap_err());
        check("IsActive", within("active", client.is_active(object(meta))).await.unwrap_err());
        let req = GetMetricsRequest { scaled_object_ref: Some(object(meta)), metric_name: "m".into() };
        check("GetMetrics", within("metrics", client.get_metrics(req)).await.unwrap_err());
        check("StreamIsActive", within("stream", client.stream_is_active(object(meta))).await.unwrap_err());
    }

    // StreamMetricSpec is not served: UNIMPLEMENTED, which KEDA tolerates.
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    within("ready", grpc.ready()).await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/externalscaler.ExternalScaler/StreamMetricSpec");
    let codec = tonic_prost::ProstCodec::<ScaledObjectRef, GetMetricSpecResponse>::default();
    let status = within("StreamMetricSpec", grpc.server_streaming(tonic::Request::new(object(&[])), path, codec)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", "externalscaler.ExternalScaler"] {
        let r = within("health", health.check(HealthCheckRequest { service: service.into() })).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "health of {service:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn stream_pushes_changes_and_ends_at_shutdown() {
    let server = start_repo(TempRepo::new().link("identity")).await;
    let mut client = ExternalScalerClient::new(channel(&server).await);
    let mut stream = within("open", client.stream_is_active(object(&[("model", "identity")]))).await.unwrap().into_inner();
    let first = within("first message", stream.message()).await.unwrap().expect("a first message");
    assert!(!first.result, "idle at first");

    // One request: active while it runs and for the fast window (1 s) after, then inactive again.
    let sent = Instant::now();
    let data: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let r = server.infer("identity", &json!({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": data}]})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let up = within("true", stream.message()).await.unwrap().expect("true");
    assert!(up.result);
    assert!(sent.elapsed() < Duration::from_secs(1), "true after {:?}", sent.elapsed());
    let down = within("false", stream.message()).await.unwrap().expect("false");
    assert!(!down.result);
    assert!(sent.elapsed() < Duration::from_secs(4), "false after {:?}", sent.elapsed());

    // A health Watch never ends on its own; it must not hold the shutdown either.
    let mut health = HealthClient::new(channel(&server).await);
    let mut watch = within("watch", health.watch(HealthCheckRequest { service: String::new() })).await.unwrap().into_inner();
    let w = within("watch first", watch.message()).await.unwrap().expect("watch message");
    assert_eq!(w.status, ServingStatus::Serving as i32);

    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    // The stream ends cleanly (no more messages), not by timeout.
    let end = within("stream end", stream.message()).await;
    assert!(matches!(end, Ok(None)), "the stream ends with OK at shutdown: {end:?}");
    within("shutdown", shutdown).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
}
