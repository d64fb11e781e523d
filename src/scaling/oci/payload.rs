//! From scaling snapshots to `PostMetricData` bodies.
//!
//! A *stream* in OCI Monitoring is namespace + metric name + dimension values. Ours are one per model and metric
//! ([`Metric`]), plus the overall `desired_replicas` under the model dimension [`ALL_MODELS`]; every stream also
//! carries the `instance` dimension and the configured extra ones, so streams of different replicas stay apart and
//! OCI can sum or average them. A call may name at most [`MAX_STREAMS_PER_CALL`] streams; [`batch_len`] picks how many
//! of the oldest buffered datapoints fit in one call, and [`body`] groups them into one `MetricDataDetails` per stream.

use crate::scaling::ScalingSnapshot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// OCI's limit of unique metric streams per PostMetricData call.
pub const MAX_STREAMS_PER_CALL: usize = 50;

/// Our own cap on datapoints per call, to keep request bodies modest (about 60 bytes each, so ≤ ~50 KB with the
/// per-stream overhead); OCI does not document a per-call datapoint limit.
pub const MAX_POINTS_PER_CALL: usize = 500;

/// The `model` dimension value of the overall (all models) stream.
pub const ALL_MODELS: &str = "_all";

/// The metrics we publish, named as in OCI (letters, digits, `.`, `_`, `-`, `$`, a letter first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    DesiredReplicas,
    QueueRequests,
    InFlight,
    ArrivalRate,
    BusyRatio,
}

impl Metric {
    pub const PER_MODEL: [Metric; 5] = [Metric::DesiredReplicas, Metric::QueueRequests, Metric::InFlight, Metric::ArrivalRate, Metric::BusyRatio];

    pub fn name(self) -> &'static str {
        match self {
            Metric::DesiredReplicas => "desired_replicas",
            Metric::QueueRequests => "queue_requests",
            Metric::InFlight => "in_flight",
            Metric::ArrivalRate => "arrival_rate",
            Metric::BusyRatio => "busy_ratio",
        }
    }

    /// The `unit` metadata (free text to OCI; shown in the Console).
    pub fn unit(self) -> &'static str {
        match self {
            Metric::DesiredReplicas => "replicas",
            Metric::QueueRequests | Metric::InFlight => "requests",
            Metric::ArrivalRate => "requests/second",
            Metric::BusyRatio => "ratio",
        }
    }
}

/// What tells streams of this replica apart: the metric and the `model` dimension.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    pub metric: Metric,
    pub model: Arc<str>,
}

/// One value of one stream at one time.
#[derive(Clone, Debug, PartialEq)]
pub struct Datapoint {
    pub stream: StreamKey,
    pub timestamp: SystemTime,
    pub value: f64,
}

/// One datapoint per stream from `snapshot`, at its timestamp. Non-finite values are skipped (JSON has no NaN).
pub fn datapoints(snapshot: &ScalingSnapshot) -> Vec<Datapoint> {
    let mut out = Vec::with_capacity(1 + snapshot.models.len() * Metric::PER_MODEL.len());
    let mut push = |metric: Metric, model: &Arc<str>, value: f64| {
        if value.is_finite() {
            out.push(Datapoint { stream: StreamKey { metric, model: model.clone() }, timestamp: snapshot.timestamp, value });
        }
    };
    push(Metric::DesiredReplicas, &Arc::from(ALL_MODELS), snapshot.desired_replicas);
    for (name, s) in &snapshot.models {
        let model: Arc<str> = Arc::from(name.as_str());
        for metric in Metric::PER_MODEL {
            let value = match metric {
                Metric::DesiredReplicas => s.desired_replicas,
                Metric::QueueRequests => s.queue_requests as f64,
                Metric::InFlight => s.in_flight as f64,
                Metric::ArrivalRate => s.arrival_rate,
                Metric::BusyRatio => s.busy_ratio,
            };
            push(metric, &model, value);
        }
    }
    out
}

/// How many of `points` (oldest first) go into the next call: as many as fit in [`MAX_STREAMS_PER_CALL`] distinct
/// streams and `max_points` datapoints. Always at least one when `points` is not empty.
pub fn batch_len<'a>(points: impl IntoIterator<Item = &'a Datapoint>, max_streams: usize, max_points: usize) -> usize {
    let mut streams: Vec<&StreamKey> = Vec::new();
    let mut n = 0;
    for p in points {
        if n >= max_points.max(1) {
            break;
        }
        if !streams.contains(&&p.stream) {
            if streams.len() >= max_streams.max(1) {
                break;
            }
            streams.push(&p.stream);
        }
        n += 1;
    }
    n
}

/// The parts of every `MetricDataDetails` that do not depend on the stream's metric and model.
#[derive(Clone, Debug)]
pub struct StreamContext {
    pub namespace: String,
    pub compartment_id: String,
    pub resource_group: Option<String>,
    /// `instance` and the configured extra dimensions (`model` is added per stream).
    pub dimensions: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostMetricDataDetails<'a> {
    metric_data: Vec<MetricDataDetails<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetricDataDetails<'a> {
    namespace: &'a str,
    compartment_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_group: Option<&'a str>,
    name: &'static str,
    dimensions: BTreeMap<&'a str, &'a str>,
    metadata: BTreeMap<&'static str, &'static str>,
    datapoints: Vec<DatapointJson>,
}

#[derive(Serialize)]
struct DatapointJson {
    timestamp: String,
    value: f64,
}

/// The JSON body of one PostMetricData call carrying `points`: one `MetricDataDetails` per stream, in order of first
/// appearance, each with its datapoints in buffer order. The caller keeps `points` within [`batch_len`].
pub fn body(context: &StreamContext, points: &[Datapoint]) -> Vec<u8> {
    let mut order: Vec<&StreamKey> = Vec::new();
    let mut grouped: BTreeMap<&StreamKey, Vec<DatapointJson>> = BTreeMap::new();
    for p in points {
        let entry = grouped.entry(&p.stream).or_insert_with(|| {
            order.push(&p.stream);
            Vec::new()
        });
        entry.push(DatapointJson { timestamp: humantime::format_rfc3339_millis(p.timestamp).to_string(), value: p.value });
    }
    let mut metric_data = Vec::with_capacity(order.len());
    for key in order {
        let mut dimensions: BTreeMap<&str, &str> = context.dimensions.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        dimensions.insert("model", &key.model);
        metric_data.push(MetricDataDetails {
            namespace: &context.namespace,
            compartment_id: &context.compartment_id,
            resource_group: context.resource_group.as_deref(),
            name: key.metric.name(),
            dimensions,
            metadata: BTreeMap::from([("unit", key.metric.unit())]),
            datapoints: grouped.remove(key).unwrap_or_default(),
        });
    }
    // Serializing maps with string keys and finite floats cannot fail; an empty body would only be refused by OCI.
    serde_json::to_vec(&PostMetricDataDetails { metric_data }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::ModelSignal;
    use std::time::{Duration, UNIX_EPOCH};

    fn snapshot(models: &[&str]) -> ScalingSnapshot {
        let mut s = ScalingSnapshot::empty(0.7);
        s.timestamp = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        s.desired_replicas = 1.5;
        for (i, m) in models.iter().enumerate() {
            let signal = ModelSignal {
                desired_replicas: 0.5,
                queue_requests: i,
                in_flight: i + 1,
                arrival_rate: 10.0,
                busy_ratio: f64::NAN,
                ..Default::default()
            };
            s.models.insert(m.to_string(), signal);
        }
        s
    }

    fn context() -> StreamContext {
        StreamContext {
            namespace: "sluice".into(),
            compartment_id: "ocid1.compartment.oc1..c".into(),
            resource_group: None,
            dimensions: BTreeMap::from([("instance".to_string(), "host-a".to_string()), ("pool".to_string(), "gpu".to_string())]),
        }
    }

    #[test]
    fn one_point_per_stream_and_no_nan() {
        let points = datapoints(&snapshot(&["a", "b"]));
        // overall + 2 models × 4 finite metrics (busy_ratio is NaN here)
        assert_eq!(points.len(), 9);
        assert_eq!(points[0].stream, StreamKey { metric: Metric::DesiredReplicas, model: Arc::from(ALL_MODELS) });
        assert_eq!(points[0].value, 1.5);
        assert!(points.iter().all(|p| p.value.is_finite()));
        let b_in_flight = points.iter().find(|p| &*p.stream.model == "b" && p.stream.metric == Metric::InFlight).unwrap();
        assert_eq!(b_in_flight.value, 2.0);
    }

    #[test]
    fn body_schema() {
        let mut points = datapoints(&snapshot(&["a"]));
        let mut later = points.clone();
        for p in &mut later {
            p.timestamp += Duration::from_secs(10);
        }
        points.extend(later);
        let json: serde_json::Value = serde_json::from_slice(&body(&context(), &points)).unwrap();
        let data = json["metricData"].as_array().unwrap();
        assert_eq!(data.len(), 5, "one MetricDataDetails per stream");
        let first = &data[0];
        assert_eq!(first["namespace"], "sluice");
        assert_eq!(first["compartmentId"], "ocid1.compartment.oc1..c");
        assert!(first.get("resourceGroup").is_none());
        assert_eq!(first["name"], "desired_replicas");
        assert_eq!(first["dimensions"], serde_json::json!({"model": "_all", "instance": "host-a", "pool": "gpu"}));
        assert_eq!(first["metadata"], serde_json::json!({"unit": "replicas"}));
        assert_eq!(
            first["datapoints"],
            serde_json::json!([
                {"timestamp": "2023-11-14T22:13:20.123Z", "value": 1.5},
                {"timestamp": "2023-11-14T22:13:30.123Z", "value": 1.5}
            ])
        );
        let mut ctx = context();
        ctx.resource_group = Some("rg".into());
        let json: serde_json::Value = serde_json::from_slice(&body(&ctx, &points[..1])).unwrap();
        assert_eq!(json["metricData"][0]["resourceGroup"], "rg");
    }

    #[test]
    fn batches_hold_at_most_50_streams() {
        let names: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let snap = snapshot(&refs);
        // 1 + 30 × 4 = 121 streams per snapshot; two snapshots buffered.
        let mut points = datapoints(&snap);
        points.extend(datapoints(&snap));
        let mut rest: &[Datapoint] = &points;
        let mut sizes = Vec::new();
        while !rest.is_empty() {
            let n = batch_len(rest, MAX_STREAMS_PER_CALL, MAX_POINTS_PER_CALL);
            assert!(n >= 1);
            let json: serde_json::Value = serde_json::from_slice(&body(&context(), &rest[..n])).unwrap();
            let streams = json["metricData"].as_array().unwrap();
            assert!(streams.len() <= MAX_STREAMS_PER_CALL);
            sizes.push(streams.len());
            rest = &rest[n..];
        }
        // 242 points of 121 streams: a call can end one snapshot and start the next (other streams).
        assert_eq!(sizes, [50, 50, 50, 50, 42]);
        // The point cap applies too, and a stream seen again costs no new stream.
        let one = datapoints(&snapshot(&[]));
        let repeated: Vec<Datapoint> = std::iter::repeat_n(one[0].clone(), 20).collect();
        assert_eq!(batch_len(&repeated, 1, 7), 7);
        assert_eq!(batch_len(&repeated, 1, 100), 20);
        assert_eq!(batch_len(&points, 1, 100), 1);
        assert_eq!(batch_len(std::iter::empty(), 50, 100), 0);
    }
}
