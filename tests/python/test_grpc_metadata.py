"""Health, metadata, model configuration and statistics over gRPC, read with tritonclient.grpc: the same facts the HTTP
endpoint gives. Also grpc.health.v1.Health (the server, the inference service and each model by name) and server
reflection (v1 and v1alpha)."""
import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import model_config_pb2, service_pb2

from helpers import expect_grpc_error, fp32, grpc_input

MODELS = ["fraud_mlp", "wide", "recommender", "identity", "fixed_affine", "all_types"]
VERSIONS = {"fraud_mlp": ["1", "2"]}


def test_server_live_and_ready(grpc_client):
    assert grpc_client.is_server_live() is True
    assert grpc_client.is_server_ready() is True


@pytest.mark.parametrize("model", MODELS)
def test_model_ready(grpc_client, model):
    assert grpc_client.is_model_ready(model) is True
    for v in VERSIONS.get(model, ["1"]):
        assert grpc_client.is_model_ready(model, v) is True


@pytest.mark.parametrize("name,version", [("no_such_model", ""), ("fraud_mlp", "7"), ("fraud_mlp", "latest"), ("", "")])
def test_unknown_model_or_version_is_not_ready_not_an_error(grpc_client, name, version):
    assert grpc_client.is_model_ready(name, version) is False


def test_server_metadata_equals_http(client, grpc_client):
    meta = grpc_client.get_server_metadata()
    assert isinstance(meta, service_pb2.ServerMetadataResponse)
    http = client.get_server_metadata()
    assert meta.name == http["name"] == "sluice"
    assert meta.version == http["version"] and meta.version
    assert list(meta.extensions) == http["extensions"]
    assert grpc_client.get_server_metadata(as_json=True) == {"name": meta.name, "version": meta.version,
                                                             "extensions": list(meta.extensions)}


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_equals_http(client, grpc_client, model):
    meta = grpc_client.get_model_metadata(model)
    http = client.get_model_metadata(model)
    assert meta.name == http["name"] == model
    assert list(meta.versions) == http["versions"] == VERSIONS.get(model, ["1"])
    assert meta.platform == http["platform"] == "onnxruntime_onnx"
    for got, want in ((meta.inputs, http["inputs"]), (meta.outputs, http["outputs"])):
        assert [(t.name, t.datatype, list(t.shape)) for t in got] == [(t["name"], t["datatype"], t["shape"]) for t in want]
    as_json = grpc_client.get_model_metadata(model, as_json=True)
    assert as_json["name"] == model and [t["name"] for t in as_json["inputs"]] == [t.name for t in meta.inputs]


def test_model_metadata_per_version(grpc_client):
    for v in ("1", "2", ""):
        meta = grpc_client.get_model_metadata("fraud_mlp", v)
        assert meta.name == "fraud_mlp" and list(meta.versions) == ["1", "2"]


@pytest.mark.parametrize("model", MODELS)
def test_model_config_equals_http(client, grpc_client, model):
    """The ModelConfig message equals the HTTP configuration JSON parsed into the same message (so every field and enum
    agrees, defaults included); `as_json` is that message as JSON."""
    config = grpc_client.get_model_config(model)
    assert isinstance(config, service_pb2.ModelConfigResponse)
    want = json_format.ParseDict(client.get_model_config(model), model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    assert config.config == want
    assert config.config.name == model and config.config.backend == "onnxruntime"
    as_json = grpc_client.get_model_config(model, as_json=True)
    assert json_format.ParseDict(as_json["config"], model_config_pb2.ModelConfig()) == config.config


def test_model_config_batching_settings(grpc_client):
    rec = grpc_client.get_model_config("recommender").config
    assert rec.max_batch_size == 32
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in rec.input] == [
        ("item_ids", "TYPE_INT64", [20]), ("user_features", "TYPE_FP32", [32])]
    assert rec.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert rec.dynamic_batching.priority_levels == 2
    fixed = grpc_client.get_model_config("fixed_affine").config
    assert fixed.max_batch_size == 0 and list(fixed.input[0].dims) == [8]
    assert fixed.WhichOneof("scheduling_choice") is None
    types = grpc_client.get_model_config("all_types").config
    assert {model_config_pb2.DataType.Name(i.data_type) for i in types.input} >= {"TYPE_STRING", "TYPE_FP16", "TYPE_BOOL"}


@pytest.mark.parametrize("call", [
    lambda c: c.get_model_metadata("no_such_model"),
    lambda c: c.get_model_metadata("fraud_mlp", "7"),
    lambda c: c.get_model_config("no_such_model"),
    lambda c: c.get_model_config("fraud_mlp", "7"),
    lambda c: c.get_inference_statistics("no_such_model"),
    lambda c: c.get_inference_statistics("fraud_mlp", "7"),
], ids=["metadata", "metadata-version", "config", "config-version", "stats", "stats-version"])
def test_unknown_model_or_version_is_not_found(grpc_client, call):
    expect_grpc_error(lambda: call(grpc_client), "NOT_FOUND")


def test_non_numeric_version_is_invalid(grpc_client):
    expect_grpc_error(lambda: grpc_client.get_model_metadata("fraud_mlp", "latest"), "INVALID_ARGUMENT", "latest")


# ---------------------------------------------------------------- statistics


def _grpc_stats(grpc_client, model, version=""):
    return {(s.name, s.version): s for s in grpc_client.get_inference_statistics(model, version).model_stats}


def test_statistics_with_and_without_version(grpc_client):
    both = _grpc_stats(grpc_client, "fraud_mlp")
    assert sorted(both) == [("fraud_mlp", "1"), ("fraud_mlp", "2")]
    one = _grpc_stats(grpc_client, "fraud_mlp", "1")
    assert sorted(one) == [("fraud_mlp", "1")]
    every = _grpc_stats(grpc_client, "")
    assert sorted(every) == sorted([(m, v) for m in MODELS for v in VERSIONS.get(m, ["1"])])
    as_json = grpc_client.get_inference_statistics("fraud_mlp", "1", as_json=True)
    assert [(s["name"], s["version"]) for s in as_json["model_stats"]] == [("fraud_mlp", "1")]


def test_statistics_count_grpc_requests_and_equal_http(client, grpc_client):
    """A 3-row gRPC request counts 3 inferences in one execution, and HTTP reports the very same numbers."""
    before = _grpc_stats(grpc_client, "identity", "1")[("identity", "1")]
    grpc_client.infer("identity", [grpc_input("input", fp32(600, (3, 256)))])
    after = _grpc_stats(grpc_client, "identity", "1")[("identity", "1")]
    assert after.inference_count - before.inference_count == 3
    assert after.execution_count - before.execution_count == 1
    assert after.inference_stats.success.count - before.inference_stats.success.count == 1
    assert after.last_inference >= max(before.last_inference, 1)
    (http,) = client.get_inference_statistics("identity", "1")["model_stats"]
    want = json_format.ParseDict({"model_stats": [http]}, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)
    assert want.model_stats[0] == after
    assert sum(b.batch_size * b.compute_infer.count for b in after.batch_stats) == after.inference_count


def test_failed_grpc_request_is_not_an_inference(grpc_client):
    before = _grpc_stats(grpc_client, "identity", "1")[("identity", "1")]
    expect_grpc_error(lambda: grpc_client.infer("identity", [grpc_input("input", fp32(601, (1, 255)))]), "INVALID_ARGUMENT")
    after = _grpc_stats(grpc_client, "identity", "1")[("identity", "1")]
    assert after.inference_count == before.inference_count


# ---------------------------------------------------------------- grpc.health.v1.Health


@pytest.mark.parametrize("service", ["", "inference.GRPCInferenceService"] + MODELS)
def test_health_serving(grpc_channel, service):
    stub = health_pb2_grpc.HealthStub(grpc_channel)
    res = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert res.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", ["no_such_model", "inference.NoSuchService", "fraud_mlp:1"])
def test_health_unknown_service_is_not_found(grpc_channel, service):
    stub = health_pb2_grpc.HealthStub(grpc_channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_sends_serving(grpc_channel):
    stub = health_pb2_grpc.HealthStub(grpc_channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service="fraud_mlp"), timeout=10)
    try:
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stream.cancel()


# ---------------------------------------------------------------- reflection


def _reflect(grpc_channel, method_path, requests):
    call = grpc_channel.stream_stream(method_path, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                      response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=10))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_the_service(grpc_channel, version):
    """v1alpha with grpcio-reflection's stub; v1 (same messages on the wire) through the channel directly."""
    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    listed, described = _reflect(grpc_channel, path, [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
    ])
    names = [s.name for s in listed.list_services_response.service]
    assert "inference.GRPCInferenceService" in names and "grpc.health.v1.Health" in names, names
    assert described.WhichOneof("message_response") == "file_descriptor_response", described
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in described.file_descriptor_response.file_descriptor_proto]
    services = {s.name: [m.name for m in s.method] for f in files for s in f.service}
    assert set(services.get("GRPCInferenceService", [])) >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer",
        "ModelConfig", "ModelStatistics"}, services
    if version == "v1alpha":  # and grpcio-reflection's own stub agrees
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
        (res,) = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert [s.name for s in res.list_services_response.service] == names


def test_reflection_unknown_symbol_is_not_found(grpc_channel):
    """An unknown symbol is NOT_FOUND: as an ErrorResponse in the stream (what the reflection protocol describes) or,
    as tonic-reflection does it, as the stream's status."""
    try:
        (res,) = _reflect(grpc_channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                          [reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.NoSuchThing")])
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        assert "inference.NoSuchThing" in err.details()
    else:
        assert res.WhichOneof("message_response") == "error_response"
        assert res.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    # The reflection service still answers afterwards.
    (listed,) = _reflect(grpc_channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                         [reflection_pb2.ServerReflectionRequest(list_services="")])
    assert listed.list_services_response.service
