"""The gRPC endpoint (inference.GRPCInferenceService) answers exactly what the HTTP endpoint answers: the same request
over HTTP (tritonclient.http, JSON and binary tensors) and over gRPC (tritonclient.grpc, raw_input_contents) gives
byte-identical outputs, for every demo model and every datatype. Inputs sent as typed `contents` (built with the
generated stubs, since tritonclient only sends raw contents) give the same bytes as raw ones."""
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from helpers import (
    ALL_TYPES,
    all_types_arrays,
    expect_grpc_error,
    fp32,
    grpc_input,
    grpc_outputs,
    grpc_raw_outputs,
    infer_request,
    make_input,
    outputs,
    recommender_inputs,
    tensor_bytes,
)


def model_inputs(model, seed):
    """name -> array for one request to `model` (a few rows where it batches)."""
    if model in ("fraud_mlp", "fraud_mlp:1", "fraud_mlp:2"):
        return {"input": fp32(seed, (5, 64))}
    if model == "wide":
        return {"input": fp32(seed, (3, 512))}
    if model == "identity":
        return {"input": fp32(seed, (6, 256))}
    if model == "fixed_affine":
        return {"x": fp32(seed, (8,))}
    if model == "recommender":
        ids, feats = recommender_inputs(seed, 4)
        return {"item_ids": ids, "user_features": feats}
    if model == "all_types":
        return {f"in_{s}": a for s, a in all_types_arrays(seed, 3, 4).items()}
    raise KeyError(model)


MODELS = ["fraud_mlp", "fraud_mlp:1", "fraud_mlp:2", "wide", "identity", "fixed_affine", "recommender", "all_types"]


def split(model):
    name, _, version = model.partition(":")
    return name, version


def http_raw_outputs(res):
    """name -> the output's bytes in the V2 binary encoding, from a tritonclient.http result (binary or JSON outputs)."""
    return {o["name"]: tensor_bytes(res.as_numpy(o["name"])) for o in res.get_response()["outputs"]}


@pytest.mark.parametrize("model", MODELS)
def test_grpc_outputs_equal_http_outputs(client, grpc_client, model):
    name, version = split(model)
    arrays = model_inputs(model, 500 + MODELS.index(model))
    g = grpc_client.infer(name, [grpc_input(n, a) for n, a in arrays.items()], model_version=version, request_id="par")
    resp = g.get_response()
    got = grpc_raw_outputs(g)
    assert resp.id == "par"
    assert resp.model_name == name
    for binary in (True, False):
        h = client.infer(name, [make_input(n, a, binary) for n, a in arrays.items()], model_version=version,
                         outputs=outputs([o.name for o in resp.outputs], binary))
        hresp = h.get_response()
        assert resp.model_version == hresp["model_version"]
        assert [o.name for o in resp.outputs] == [o["name"] for o in hresp["outputs"]]
        for o, ho in zip(resp.outputs, hresp["outputs"]):
            assert o.datatype == ho["datatype"], o.name
            assert list(o.shape) == ho["shape"], o.name
        assert got == http_raw_outputs(h), f"{model}: gRPC and HTTP ({'binary' if binary else 'JSON'}) outputs differ"
    # And tritonclient.grpc decodes them to the same arrays.
    for o in resp.outputs:
        assert tensor_bytes(g.as_numpy(o.name)) == got[o.name], o.name


def test_default_version_is_the_latest(grpc_client):
    x = fp32(510, (2, 64))
    res = grpc_client.infer("fraud_mlp", [grpc_input("input", x)])
    assert res.get_response().model_version == "2"
    v2 = grpc_client.infer("fraud_mlp", [grpc_input("input", x)], model_version="2")
    v1 = grpc_client.infer("fraud_mlp", [grpc_input("input", x)], model_version="1")
    assert grpc_raw_outputs(res) == grpc_raw_outputs(v2)
    assert v1.get_response().model_version == "1"
    assert grpc_raw_outputs(v1) != grpc_raw_outputs(v2), "versions 1 and 2 have different weights"


def test_every_datatype_round_trips_exactly(grpc_client):
    """all_types is an Identity per datatype: every output is byte-for-byte its input (extremes, FP16, BOOL, BYTES)."""
    arrays = all_types_arrays(511, 4, 5)
    res = grpc_client.infer("all_types", [grpc_input(f"in_{s}", a) for s, a in arrays.items()])
    resp = res.get_response()
    assert [o.name for o in resp.outputs] == [f"out_{s}" for s in ALL_TYPES]
    raw = grpc_raw_outputs(res)
    for o in resp.outputs:
        suffix = o.name[len("out_"):]
        assert o.datatype == ALL_TYPES[suffix][0]
        assert list(o.shape) == [4, 5]
        assert raw[o.name] == tensor_bytes(arrays[suffix]), suffix
        got = res.as_numpy(o.name)
        if suffix == "bytes":
            assert got.tolist() == arrays[suffix].tolist()
        else:
            assert got.dtype == arrays[suffix].dtype and np.array_equal(got.view(np.uint8), arrays[suffix].view(np.uint8))


@pytest.mark.parametrize("n", [0, 1])
def test_all_types_edge_widths(client, grpc_client, n):
    """[rows, 0] (empty tensors, empty raw contents) and [rows, 1] are answered alike on both protocols."""
    arrays = {f"in_{s}": a for s, a in all_types_arrays(512 + n, 2, n).items()}
    g = grpc_client.infer("all_types", [grpc_input(k, a) for k, a in arrays.items()])
    h = client.infer("all_types", [make_input(k, a) for k, a in arrays.items()])
    assert grpc_raw_outputs(g) == http_raw_outputs(h)
    for o in g.get_response().outputs:
        assert list(o.shape) == [2, n]


def test_output_selection_and_order(client, grpc_client):
    """Only the outputs asked for come back, in the order asked for, as on HTTP."""
    arrays = {f"in_{s}": a for s, a in all_types_arrays(513, 2, 3).items()}
    names = ["out_uint64", "out_bool", "out_bytes", "out_fp16"]
    g = grpc_client.infer("all_types", [grpc_input(k, a) for k, a in arrays.items()], outputs=grpc_outputs(names))
    assert [o.name for o in g.get_response().outputs] == names
    h = client.infer("all_types", [make_input(k, a) for k, a in arrays.items()], outputs=outputs(names))
    assert grpc_raw_outputs(g) == http_raw_outputs(h)


def test_request_without_id_has_no_id(grpc_client):
    res = grpc_client.infer("identity", [grpc_input("input", fp32(514, (1, 256)))])
    assert res.get_response().id == ""


# ---------------------------------------------------------------- typed contents (generated stubs)

TYPED_MODELS = ["fraud_mlp", "fraud_mlp:1", "wide", "identity", "fixed_affine", "recommender"]


@pytest.mark.parametrize("model", TYPED_MODELS)
def test_typed_contents_equal_raw_contents_and_http(client, grpc_stub, model):
    """fp32_contents / int64_contents give the same outputs as raw_input_contents, and as HTTP JSON."""
    name, version = split(model)
    arrays = model_inputs(model, 520 + TYPED_MODELS.index(model))
    typed = grpc_stub.ModelInfer(infer_request(name, arrays, typed=True, version=version, request_id="t"), timeout=30)
    raw = grpc_stub.ModelInfer(infer_request(name, arrays, typed=False, version=version, request_id="r"), timeout=30)
    assert (typed.id, raw.id) == ("t", "r")
    assert grpc_raw_outputs(typed) == grpc_raw_outputs(raw)
    h = client.infer(name, [make_input(n, a, False) for n, a in arrays.items()], model_version=version,
                     outputs=outputs([o.name for o in raw.outputs], False))
    assert grpc_raw_outputs(typed) == http_raw_outputs(h)
    assert not any(o.HasField("contents") for o in typed.outputs), "outputs come back as raw_output_contents only"


def test_typed_contents_of_every_other_datatype_decode(grpc_stub):
    """all_types needs all 13 inputs and FP16 has no typed field (and raw contents must cover every input or none), so
    it cannot run fully typed. Sent typed without in_fp16, every typed input decodes (extremes included: INT8/16/32 in
    int_contents, UINT8/16/32 in uint_contents, 64-bit, BOOL, BYTES) and the only complaint is the missing in_fp16."""
    arrays = {f"in_{s}": a for s, a in all_types_arrays(530, 3, 4).items() if s != "fp16"}
    req = infer_request("all_types", arrays, typed=True)
    for t in req.inputs:
        assert t.contents.ListFields(), t.name
    expect_grpc_error(lambda: grpc_stub.ModelInfer(req, timeout=30), "INVALID_ARGUMENT", "missing input", "in_fp16")


def test_typed_and_raw_mixed_across_requests_share_batches(grpc_stub):
    """Typed and raw requests for the same model are the same tensors to the scheduler: 8 of each, in flight together,
    each get their own rows back."""
    x = fp32(531, (16, 256))
    futures = [grpc_stub.ModelInfer.future(infer_request("identity", {"input": x[i:i + 1]}, typed=i % 2 == 0, request_id=str(i)),
                                           timeout=30) for i in range(16)]
    for i, f in enumerate(futures):
        res = f.result()
        assert res.id == str(i)
        assert grpc_raw_outputs(res)["output"] == x[i:i + 1].tobytes()


def test_stub_response_matches_tritonclient(grpc_client, grpc_stub):
    """The generated stub and tritonclient.grpc see the same ModelInferResponse."""
    ids, feats = recommender_inputs(532, 3)
    arrays = {"item_ids": ids, "user_features": feats}
    stub_res = grpc_stub.ModelInfer(infer_request("recommender", arrays, request_id="s"), timeout=30)
    tc = grpc_client.infer("recommender", [grpc_input(n, a) for n, a in arrays.items()], request_id="s")
    assert isinstance(stub_res, service_pb2.ModelInferResponse)
    tc_res = tc.get_response()
    # recommender caches its responses: the stub's call ran the model, tritonclient's identical one was a hit. Apart
    # from that response parameter the two are the same message, byte for byte.
    assert stub_res.parameters["sluice_cache"].string_param in ("miss", "hit")
    assert tc_res.parameters["sluice_cache"].string_param == "hit"
    del stub_res.parameters["sluice_cache"]
    del tc_res.parameters["sluice_cache"]
    assert stub_res == tc_res
