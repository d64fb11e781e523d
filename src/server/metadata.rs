//! JSON bodies of the metadata endpoints: server and model metadata (V2), Triton's model configuration and statistics
//! extensions (which Triton's tools, `perf_analyzer` among them, read before they send requests).

use crate::backend::TensorSpec;
use crate::repository::ModelVersion;
use serde_json::{json, Value};

pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration", "statistics"];

pub fn server() -> Value {
    json!({ "name": "sluice", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS })
}

fn v2_tensor(spec: &TensorSpec) -> Value {
    json!({ "name": spec.name, "datatype": spec.dtype.v2_name(), "shape": spec.dims })
}

/// V2 model metadata. Shapes are the model's own, batch dimension (-1) included, as Triton reports them.
pub fn model(m: &ModelVersion, versions: Vec<String>) -> Value {
    json!({
        "name": m.name,
        "versions": versions,
        "platform": m.platform,
        "inputs": m.signature.inputs.iter().map(v2_tensor).collect::<Vec<_>>(),
        "outputs": m.signature.outputs.iter().map(v2_tensor).collect::<Vec<_>>(),
        "parameters": { "execution_provider": m.execution_provider },
    })
}

fn config_tensor(spec: &TensorSpec, batching: bool) -> Value {
    let dims: &[i64] = if batching { spec.dims.get(1..).unwrap_or(&[]) } else { &spec.dims };
    json!({ "name": spec.name, "data_type": spec.dtype.triton_config_name(), "dims": dims })
}

/// Triton's model configuration (`GET /v2/models/{m}/config`): dims exclude the batch dimension when the model batches.
pub fn config(m: &ModelVersion) -> Value {
    let s = &m.settings;
    let batching = s.max_batch_size > 0;
    let mut config = json!({
        "name": m.name,
        "platform": m.platform,
        "backend": "onnxruntime",
        // Every version found on disk is served; the highest answers requests that name none.
        "version_policy": { "all": {} },
        "max_batch_size": s.max_batch_size,
        "input": m.signature.inputs.iter().map(|t| config_tensor(t, batching)).collect::<Vec<_>>(),
        "output": m.signature.outputs.iter().map(|t| config_tensor(t, batching)).collect::<Vec<_>>(),
        "instance_group": [{
            "name": format!("{}_0", m.name),
            "kind": if m.execution_provider == "cpu" { "KIND_CPU" } else { "KIND_GPU" },
            "count": s.instances,
        }],
        "parameters": {
            "execution_provider": { "string_value": m.execution_provider },
            "intra_op_thread_count": { "string_value": s.threads.to_string() },
        },
    });
    if batching {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": s.preferred_batch_sizes,
            "max_queue_delay_microseconds": s.max_queue_delay.as_micros() as u64,
            "preserve_ordering": false,
            "priority_levels": s.priority_levels,
            "default_priority_level": s.default_priority,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": s.queue_timeout.as_micros() as u64,
                "allow_timeout_override": true,
                "max_queue_size": s.queue_capacity,
            },
        });
    }
    config
}

fn count_ns(c: crate::scheduler::stats::CountNs) -> Value {
    json!({ "count": c.count, "ns": c.ns })
}

/// One entry of Triton's statistics extension.
pub fn stats(m: &ModelVersion) -> Value {
    let s = m.scheduler.stats().snapshot();
    let zero = json!({ "count": 0, "ns": 0 });
    let (queued_requests, queued_rows) = m.scheduler.depth();
    json!({
        "name": m.name,
        "version": m.version_string(),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": count_ns(s.success),
            "fail": count_ns(s.fail),
            "queue": count_ns(s.queue),
            "compute_input": count_ns(s.compute_input),
            "compute_infer": count_ns(s.compute_infer),
            "compute_output": count_ns(s.compute_output),
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": s.batch_sizes.iter().map(|(size, c)| json!({
            "batch_size": size,
            "compute_input": count_ns(c.compute_input),
            "compute_infer": count_ns(c.compute_infer),
            "compute_output": count_ns(c.compute_output),
        })).collect::<Vec<_>>(),
        "memory_usage": [],
        "sluice": {
            "rejected": s.rejected,
            "timed_out": s.timed_out,
            "queued_requests": queued_requests,
            "queued_rows": queued_rows,
        },
    })
}
