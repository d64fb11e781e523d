"""Health, server and model metadata, model configuration and statistics, read with tritonclient's HTTP client."""
import asyncio

import numpy as np
import pytest
import tritonclient.http.aio as aioclient

from helpers import ALL_TYPES, expect_error, fp32, make_input

# name -> (inputs, outputs, max_batch_size); each tensor (name, datatype, dims without the batch dimension).
DEMO_MODELS = {
    "fraud_mlp": ([("input", "FP32", [64])], [("logits", "FP32", [2])], 64),
    "wide": ([("input", "FP32", [512])], [("logits", "FP32", [16])], 64),
    "recommender": ([("item_ids", "INT64", [20]), ("user_features", "FP32", [32])], [("scores", "FP32", [100])], 32),
    "identity": ([("input", "FP32", [256])], [("output", "FP32", [256])], 64),
    "fixed_affine": ([("x", "FP32", [8])], [("y", "FP32", [4])], 0),
    "all_types": (
        [(f"in_{s}", dt, [-1]) for s, (dt, _) in ALL_TYPES.items()],
        [(f"out_{s}", dt, [-1]) for s, (dt, _) in ALL_TYPES.items()],
        8,
    ),
}

CONFIG_TYPE = {"BYTES": "TYPE_STRING"}


def config_type(datatype):
    return CONFIG_TYPE.get(datatype, "TYPE_" + datatype)


def test_server_live_and_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()


def test_aio_client_reads_the_same(client, server):
    """tritonclient.http.aio (aiohttp) sees the same health, metadata and configuration as the gevent client."""

    async def main():
        async with aioclient.InferenceServerClient(server) as aio:
            return (
                await aio.is_server_live(), await aio.is_server_ready(), await aio.is_model_ready("recommender"),
                await aio.get_server_metadata(), await aio.get_model_metadata("recommender"),
                await aio.get_model_config("recommender"),
            )

    live, ready, model_ready, server_meta, model_meta, config = asyncio.run(main())
    assert live and ready and model_ready
    assert server_meta == client.get_server_metadata()
    assert model_meta == client.get_model_metadata("recommender")
    assert config == client.get_model_config("recommender")


def test_server_metadata(client):
    meta = client.get_server_metadata()
    assert meta["name"] == "sluice"
    assert isinstance(meta.get("version"), str) and meta["version"]
    for ext in ("binary_tensor_data", "model_configuration", "statistics"):
        assert ext in meta["extensions"], meta


@pytest.mark.parametrize("model", sorted(DEMO_MODELS))
def test_model_ready(client, model):
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, "1")


def test_model_ready_versions(client):
    assert client.is_model_ready("fraud_mlp", "2")
    assert not client.is_model_ready("fraud_mlp", "3")
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize("model", sorted(DEMO_MODELS))
def test_model_metadata(client, model):
    inputs, outputs, max_batch = DEMO_MODELS[model]
    meta = client.get_model_metadata(model)
    assert meta["name"] == model
    assert meta["platform"] == "onnxruntime_onnx"
    assert "1" in meta["versions"]
    batch = [-1] if max_batch > 0 else []
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [(n, dt, batch + d) for n, dt, d in inputs]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [(n, dt, batch + d) for n, dt, d in outputs]


def test_model_metadata_versions(client):
    meta = client.get_model_metadata("fraud_mlp")
    assert sorted(meta["versions"]) == ["1", "2"]
    v1 = client.get_model_metadata("fraud_mlp", "1")
    assert v1["name"] == "fraud_mlp"
    assert [t["name"] for t in v1["inputs"]] == ["input"]


@pytest.mark.parametrize("model", sorted(DEMO_MODELS))
def test_model_config(client, model):
    inputs, outputs, max_batch = DEMO_MODELS[model]
    config = client.get_model_config(model)
    assert config["name"] == model
    assert config["max_batch_size"] == max_batch
    assert config["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [(n, config_type(dt), d) for n, dt, d in inputs]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [(n, config_type(dt), d) for n, dt, d in outputs]
    if max_batch > 0:
        assert "dynamic_batching" in config, config
    else:
        assert "dynamic_batching" not in config, config


def test_model_config_batching_settings(client):
    fraud = client.get_model_config("fraud_mlp")["dynamic_batching"]
    assert fraud["max_queue_delay_microseconds"] == 500
    wide = client.get_model_config("wide")["dynamic_batching"]
    assert wide["max_queue_delay_microseconds"] == 5000
    assert wide["preferred_batch_size"] == [64]
    rec = client.get_model_config("recommender")["dynamic_batching"]
    assert rec["priority_levels"] == 2
    assert rec["default_priority_level"] == 2
    assert rec["default_queue_policy"]["default_timeout_microseconds"] == 2_000_000
    assert rec["default_queue_policy"]["max_queue_size"] == 256


def test_metadata_of_unknown_model_or_version(client):
    expect_error(lambda: client.get_model_metadata("no_such_model"), 404, "no_such_model")
    expect_error(lambda: client.get_model_config("no_such_model"), 404, "no_such_model")
    expect_error(lambda: client.get_model_metadata("fraud_mlp", "9"), 404, "9")
    expect_error(lambda: client.get_inference_statistics("no_such_model"), 404, "no_such_model")


def _stats(client, model, version=""):
    stats = client.get_inference_statistics(model, version)["model_stats"]
    assert len(stats) == 1, stats
    s = stats[0]
    assert s["name"] == model
    return s


def _batch_count(stats, size):
    return sum(b["compute_infer"]["count"] for b in stats["batch_stats"] if b["batch_size"] == size)


def test_statistics_shape(client):
    stats = client.get_inference_statistics()["model_stats"]
    seen = {(s["name"], s["version"]) for s in stats}
    for model in DEMO_MODELS:
        assert (model, "1") in seen, seen
    assert ("fraud_mlp", "2") in seen
    for s in stats:
        for key in ("inference_count", "execution_count", "inference_stats", "batch_stats", "last_inference"):
            assert key in s, (key, s)
        for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            assert set(s["inference_stats"][key]) >= {"count", "ns"}, s


def test_statistics_count_a_batched_request(client):
    """A 3-row request to identity is one execution of batch size 3 (nothing else runs on identity meanwhile)."""
    before = _stats(client, "identity", "1")
    x = fp32(31, (3, 256))
    client.infer("identity", [make_input("input", x)])
    after = _stats(client, "identity", "1")
    assert after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 1
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 1
    assert _batch_count(after, 3) - _batch_count(before, 3) == 1
    assert after["last_inference"] >= before["last_inference"]
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]


def test_statistics_count_unbatched_requests(client):
    before = _stats(client, "fixed_affine")
    for i in range(4):
        client.infer("fixed_affine", [make_input("x", fp32(40 + i, (8,)))])
    after = _stats(client, "fixed_affine")
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] == 4
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 4


def test_statistics_per_version(client):
    v1_before = _stats(client, "fraud_mlp", "1")
    v2_before = _stats(client, "fraud_mlp", "2")
    client.infer("fraud_mlp", [make_input("input", fp32(50, (2, 64)))], model_version="1")
    v1 = _stats(client, "fraud_mlp", "1")
    v2 = _stats(client, "fraud_mlp", "2")
    assert v1["version"] == "1" and v2["version"] == "2"
    assert v1["inference_count"] - v1_before["inference_count"] == 2
    assert v2["inference_count"] == v2_before["inference_count"]


def test_statistics_without_version_cover_every_version(client):
    """Triton answers a statistics request without a version with one entry per ready version of the model."""
    stats = client.get_inference_statistics("fraud_mlp")["model_stats"]
    assert sorted(s["version"] for s in stats) == ["1", "2"], [(s["name"], s["version"]) for s in stats]


def test_failed_request_does_not_count_as_inference(client):
    before = _stats(client, "identity", "1")
    expect_error(lambda: client.infer("identity", [make_input("input", np.zeros((1, 255), np.float32))]), 400)
    after = _stats(client, "identity", "1")
    assert after["inference_count"] == before["inference_count"]
    assert after["execution_count"] == before["execution_count"]
