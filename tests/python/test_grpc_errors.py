"""Errors over gRPC: the status code (as tritonclient.grpc reports it, "StatusCode.X") and a message that names the
problem - the same message as HTTP where both protocols can express the request. Malformed requests that tritonclient
would never send are built with the generated stubs. After every kind of bad request the server still answers a good
one."""
import ctypes

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from helpers import (
    all_types_arrays,
    expect_error,
    expect_grpc_error,
    fp32,
    grpc_input,
    grpc_outputs,
    grpc_raw_outputs,
    infer_request,
    make_input,
    recommender_inputs,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # [server] grpc_max_message_bytes, the default


def good_request_succeeds(grpc_client):
    x = fp32(7, (2, 64))
    res = grpc_client.infer("fraud_mlp", [grpc_input("input", x)])
    assert res.as_numpy("logits").shape == (2, 2)
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()


def rec(rows, seed=8):
    ids, feats = recommender_inputs(seed, rows)
    return [grpc_input("item_ids", ids), grpc_input("user_features", feats)]


def mismatched(name, array, shape):
    """An input whose declared shape disagrees with its data (tritonclient checks this itself unless set_shape is used)."""
    inp = grpc_input(name, array)
    inp.set_shape(shape)
    return inp


def x64(rows=1):
    return grpc_input("input", fp32(0, (rows, 64)))


# Each case: (id, callable(grpc_client), gRPC code, fragments the message must contain).
CASES = [
    ("unknown-model", lambda c: c.infer("no_such_model", [x64()]), "NOT_FOUND", ["no_such_model"]),
    ("unknown-version", lambda c: c.infer("fraud_mlp", [x64()], model_version="7"), "NOT_FOUND", ["fraud_mlp", "7"]),
    ("non-numeric-version", lambda c: c.infer("fraud_mlp", [x64()], model_version="latest"), "INVALID_ARGUMENT", ["latest"]),
    ("wrong-input-name", lambda c: c.infer("fraud_mlp", [grpc_input("features", fp32(0, (1, 64)))]), "INVALID_ARGUMENT",
     ["features"]),
    ("missing-input", lambda c: c.infer("recommender", rec(1)[1:]), "INVALID_ARGUMENT", ["item_ids"]),
    ("extra-input", lambda c: c.infer("fraud_mlp", [x64(), grpc_input("bogus", fp32(0, (1, 64)))]), "INVALID_ARGUMENT",
     ["bogus"]),
    ("duplicate-input", lambda c: c.infer("fraud_mlp", [x64(), x64()]), "INVALID_ARGUMENT", ["input"]),
    ("wrong-dtype", lambda c: c.infer("fraud_mlp", [grpc_input("input", fp32(0, (1, 64)).astype(np.float64))]),
     "INVALID_ARGUMENT", ["input", "FP64", "FP32"]),
    ("wrong-dtype-int", lambda c: c.infer("recommender", [grpc_input("item_ids", np.zeros((1, 20), np.int32)), rec(1)[1]]),
     "INVALID_ARGUMENT", ["item_ids", "INT32", "INT64"]),
    ("wrong-shape", lambda c: c.infer("fraud_mlp", [grpc_input("input", fp32(0, (1, 63)))]), "INVALID_ARGUMENT",
     ["input", "63"]),
    ("wrong-rank", lambda c: c.infer("fraud_mlp", [grpc_input("input", fp32(0, (64,)))]), "INVALID_ARGUMENT", ["input"]),
    ("zero-batch", lambda c: c.infer("fraud_mlp", [grpc_input("input", fp32(0, (0, 64)))]), "INVALID_ARGUMENT", ["input"]),
    ("fixed-shape-with-batch", lambda c: c.infer("fixed_affine", [grpc_input("x", fp32(0, (1, 8)))]), "INVALID_ARGUMENT",
     ["x"]),
    ("over-max-batch", lambda c: c.infer("fraud_mlp", [x64(65)]), "INVALID_ARGUMENT", ["65", "64"]),
    ("over-max-batch-recommender", lambda c: c.infer("recommender", rec(33)), "INVALID_ARGUMENT", ["33", "32"]),
    ("shape-data-mismatch", lambda c: c.infer("fraud_mlp", [mismatched("input", fp32(0, (1, 64)), [2, 64])]),
     "INVALID_ARGUMENT", ["input", "512", "256"]),
    ("batch-rows-disagree", lambda c: c.infer("recommender", [rec(2)[0], rec(3)[1]]), "INVALID_ARGUMENT",
     ["item_ids", "user_features"]),
    ("unknown-output", lambda c: c.infer("fraud_mlp", [x64()], outputs=grpc_outputs(["probs"])), "INVALID_ARGUMENT",
     ["probs"]),
    ("duplicate-output", lambda c: c.infer("fraud_mlp", [x64()], outputs=grpc_outputs(["logits"] * 2)), "INVALID_ARGUMENT",
     ["logits"]),
    ("classification", lambda c: c.infer("fraud_mlp", [x64()], outputs=grpc_outputs(["logits"], class_count=1)),
     "INVALID_ARGUMENT", ["classification"]),
    ("priority-out-of-range", lambda c: c.infer("recommender", rec(1), priority=3), "INVALID_ARGUMENT", ["priority"]),
    ("bytes-not-utf8", lambda c: c.infer("all_types", [grpc_input(f"in_{s}", a) for s, a in bad_bytes(b"\xff\xfe").items()]),
     "INVALID_ARGUMENT", ["in_bytes", "UTF-8"]),
    ("bytes-with-nul", lambda c: c.infer("all_types", [grpc_input(f"in_{s}", a) for s, a in bad_bytes(b"a\x00b").items()]),
     "INVALID_ARGUMENT", ["in_bytes", "NUL"]),
]


def bad_bytes(item):
    arrays = all_types_arrays(9, 1, 2)
    arrays["bytes"] = np.array([[item, b"ok"]], dtype=np.object_)
    return arrays


@pytest.mark.parametrize("call,code,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(grpc_client, call, code, fragments):
    message = expect_grpc_error(lambda: call(grpc_client), code, *fragments)
    assert message
    good_request_succeeds(grpc_client)


# The same bad requests over HTTP (tritonclient.http): the same message, with the matching HTTP status.
HTTP_TWINS = [
    ("unknown-model", lambda c: c.infer("no_such_model", [make_input("input", fp32(0, (1, 64)))]), 404,
     lambda g: g.infer("no_such_model", [x64()])),
    ("wrong-dtype", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)).astype(np.float64))]), 400,
     lambda g: g.infer("fraud_mlp", [grpc_input("input", fp32(0, (1, 64)).astype(np.float64))])),
    ("wrong-shape", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 63)))]), 400,
     lambda g: g.infer("fraud_mlp", [grpc_input("input", fp32(0, (1, 63)))])),
    ("over-max-batch", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (65, 64)))]), 400,
     lambda g: g.infer("fraud_mlp", [x64(65)])),
    ("priority", lambda c: c.infer("recommender", [make_input("item_ids", recommender_inputs(8, 1)[0]),
                                                   make_input("user_features", recommender_inputs(8, 1)[1])], priority=3), 400,
     lambda g: g.infer("recommender", rec(1), priority=3)),
]


@pytest.mark.parametrize("http_call,status,grpc_call", [c[1:] for c in HTTP_TWINS], ids=[c[0] for c in HTTP_TWINS])
def test_grpc_error_message_equals_http(client, grpc_client, http_call, status, grpc_call):
    code = {404: "NOT_FOUND", 400: "INVALID_ARGUMENT"}[status]
    http_message = expect_error(lambda: http_call(client), status).message()
    assert expect_grpc_error(lambda: grpc_call(grpc_client), code) == http_message


# ---------------------------------------------------------------- malformed requests (generated stubs)


def stub_call(grpc_stub, req):
    return lambda: grpc_stub.ModelInfer(req, timeout=30)


def fraud_req(**kwargs):
    return infer_request("fraud_mlp", {"input": fp32(1, (1, 64))}, **kwargs)


def with_raw(req, raws):
    del req.raw_input_contents[:]
    req.raw_input_contents.extend(raws)
    return req


def types_req(seed=2, **kwargs):
    return infer_request("all_types", {f"in_{s}": a for s, a in all_types_arrays(seed, 1, 2).items()}, **kwargs)


def set_raw(req, name, raw):
    req.raw_input_contents[[t.name for t in req.inputs].index(name)] = raw
    return req


def with_typed(req, name, field, values):
    t = next(t for t in req.inputs if t.name == name)
    t.contents.Clear()
    getattr(t.contents, field).extend(values)
    return req


def typed_types():
    """all_types with every input typed except in_fp16, which is left out (it has no typed field)."""
    arrays = {f"in_{s}": a for s, a in all_types_arrays(3, 1, 2).items() if s != "fp16"}
    return infer_request("all_types", arrays, typed=True)


def shaped(req, shape):
    del req.inputs[0].shape[:]
    req.inputs[0].shape.extend(shape)
    return req


def datatype(req, value):
    req.inputs[0].datatype = value
    return req


def both(req):
    req.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    return req


def two_inputs_one_raw():
    req = infer_request("recommender", dict(zip(["item_ids", "user_features"], recommender_inputs(4, 1))))
    del req.raw_input_contents[1:]
    return req


STUB_CASES = [
    ("raw-too-short", lambda: with_raw(fraud_req(), [b"\0" * 255]), ["input", "256", "255"]),
    ("raw-too-long", lambda: with_raw(fraud_req(), [b"\0" * 257]), ["input", "256", "257"]),
    ("raw-empty", lambda: with_raw(fraud_req(), [b""]), ["input", "256", "0 bytes"]),
    ("raw-more-entries-than-inputs", lambda: with_raw(fraud_req(), [b"\0" * 256] * 2), ["raw_input_contents", "2", "1"]),
    ("raw-fewer-entries-than-inputs", two_inputs_one_raw, ["raw_input_contents", "1", "2"]),
    ("raw-count-all-types", lambda: with_raw(types_req(), [b"\0"]), ["raw_input_contents", "13"]),
    ("raw-fp16-odd-bytes", lambda: set_raw(types_req(), "in_fp16", b"\0\0\0"), ["in_fp16"]),
    ("raw-bytes-truncated-item", lambda: set_raw(types_req(), "in_bytes", b"\x64\0\0\0abc"), ["in_bytes", "malformed"]),
    ("raw-bytes-truncated-prefix", lambda: set_raw(types_req(), "in_bytes", b"\x01\0"), ["in_bytes", "malformed"]),
    ("raw-bytes-too-few-items", lambda: set_raw(types_req(), "in_bytes", b"\x01\0\0\0a"), ["in_bytes"]),
    ("typed-too-few", lambda: with_typed(fraud_req(typed=True), "input", "fp32_contents", [0.0] * 63),
     ["input", "fp32_contents", "63", "64"]),
    ("typed-too-many", lambda: with_typed(fraud_req(typed=True), "input", "fp32_contents", [0.0] * 65),
     ["input", "65", "64"]),
    ("typed-wrong-field", lambda: with_typed(fraud_req(typed=True), "input", "fp64_contents", [0.0] * 64),
     ["input", "fp32_contents", "0"]),
    ("typed-int64-in-int-contents", lambda: with_typed(typed_types(), "in_int64", "int_contents", [1, 2]),
     ["in_int64", "int64_contents"]),
    ("typed-int8-over", lambda: with_typed(typed_types(), "in_int8", "int_contents", [1, 128]), ["in_int8", "128", "INT8"]),
    ("typed-int8-under", lambda: with_typed(typed_types(), "in_int8", "int_contents", [-129, 0]), ["in_int8", "-129", "INT8"]),
    ("typed-int16-over", lambda: with_typed(typed_types(), "in_int16", "int_contents", [32768, 0]), ["in_int16", "INT16"]),
    ("typed-uint8-over", lambda: with_typed(typed_types(), "in_uint8", "uint_contents", [256, 0]), ["in_uint8", "UINT8"]),
    ("typed-uint16-over", lambda: with_typed(typed_types(), "in_uint16", "uint_contents", [0, 65536]), ["in_uint16", "UINT16"]),
    ("typed-fp16", lambda: with_typed(typed_with_fp16(), "in_fp16", "fp32_contents", [0.0, 1.0]),
     ["in_fp16", "raw_input_contents"]),
    ("typed-missing-fp16", lambda: typed_types(), ["in_fp16"]),
    ("shape-overflow", lambda: shaped(fraud_req(), [2 ** 62, 2 ** 62]), ["input", "max_tensor_elements"]),
    ("shape-negative", lambda: shaped(fraud_req(), [-1, 64]), ["input", "-1"]),
    ("shape-over-element-limit", lambda: shaped(fraud_req(), [1, 2 ** 25]), ["input", "max_tensor_elements"]),
    ("datatype-lowercase", lambda: datatype(fraud_req(), "fp32"), ["input", "fp32"]),
    ("datatype-unknown", lambda: datatype(fraud_req(), "FLOAT"), ["input", "FLOAT"]),
    ("no-inputs", lambda: infer_request("fraud_mlp", {}), ["no inputs"]),
    ("priority-string", lambda: fraud_req(parameters={"priority": "1"}), ["priority"]),
    ("priority-negative", lambda: fraud_req(parameters={"priority": -1}), ["priority", "-1"]),
    ("timeout-bool", lambda: fraud_req(parameters={"timeout": True}), ["timeout"]),
]


def typed_with_fp16():
    """all_types with every input typed, and in_fp16 [1, 2] (which has no typed field) without contents yet."""
    req = typed_types()
    t = req.inputs.add()
    t.name, t.datatype = "in_fp16", "FP16"
    t.shape.extend([1, 2])
    return req


@pytest.mark.parametrize("build,fragments", [c[1:] for c in STUB_CASES], ids=[c[0] for c in STUB_CASES])
def test_malformed_request_is_invalid_argument(grpc_client, grpc_stub, build, fragments):
    expect_grpc_error(stub_call(grpc_stub, build()), "INVALID_ARGUMENT", *fragments)
    good_request_succeeds(grpc_client)


def test_unknown_model_via_stub_is_not_found(grpc_stub):
    expect_grpc_error(stub_call(grpc_stub, infer_request("", {"input": fp32(1, (1, 64))})), "NOT_FOUND")
    expect_grpc_error(stub_call(grpc_stub, infer_request("no_such_model", {"input": fp32(1, (1, 64))})), "NOT_FOUND",
                      "no_such_model")


def test_raw_and_typed_for_one_input_names_the_grpc_fields(grpc_stub):
    """An input with both typed `contents` and a raw_input_contents entry is refused; the message should name the gRPC
    fields involved (it reuses the HTTP wording, 'data' and 'parameters.binary_data_size', which a gRPC client never
    sent)."""
    message = expect_grpc_error(stub_call(grpc_stub, both(fraud_req())), "INVALID_ARGUMENT", "input")
    assert "contents" in message and "binary_data_size" not in message, message


def test_input_without_any_data_names_the_grpc_fields(grpc_stub):
    """An input with neither typed `contents` nor raw contents is refused; the message should name the gRPC fields
    (not HTTP's 'data' / 'parameters.binary_data_size')."""
    req = fraud_req(typed=True)
    req.inputs[0].ClearField("contents")
    message = expect_grpc_error(stub_call(grpc_stub, req), "INVALID_ARGUMENT", "input")
    assert "contents" in message and "binary_data_size" not in message, message


def test_unknown_parameters_are_ignored(grpc_stub):
    """Request and input parameters the server does not use (Triton's sequence_id, binary_data_size) don't fail it."""
    ref = grpc_raw_outputs(grpc_stub.ModelInfer(fraud_req(), timeout=30))
    req = fraud_req(parameters={"sequence_id": 5, "binary_data_output": True, "note": "x"})
    req.inputs[0].parameters["binary_data_size"].int64_param = 256
    assert grpc_raw_outputs(grpc_stub.ModelInfer(req, timeout=30)) == ref


# ---------------------------------------------------------------- transport-level errors


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_is_refused(grpc_client, algorithm):
    """The server does not accept compressed messages: UNIMPLEMENTED naming the encoding (as gRPC specifies)."""
    expect_grpc_error(lambda: grpc_client.infer("fraud_mlp", [x64()], compression_algorithm=algorithm), "UNIMPLEMENTED",
                      algorithm)
    good_request_succeeds(grpc_client)


def _varint(v):
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)


def test_oversized_message_is_refused(grpc_client, grpc_channel):
    """A 64 MiB + 1 KiB request (over the server's 64 MiB limit) is refused with OUT_OF_RANGE or RESOURCE_EXHAUSTED
    naming the limit, and the server goes on serving. The message is sent pre-serialized: one zero-filled bytes object
    (calloc'd, so its pages cost nothing until gRPC copies it), the ModelInferRequest header written into its start,
    which keeps this test's extra memory near 64 MiB."""
    payload = MAX_MESSAGE_BYTES + 1024
    head = service_pb2.ModelInferRequest(model_name="identity")
    t = head.inputs.add()
    t.name, t.datatype = "input", "FP32"
    t.shape.extend([payload // 1024, 256])
    prefix = head.SerializeToString() + b"\x3a" + _varint(payload)  # field 7 (raw_input_contents), length-delimited
    message = bytes(len(prefix) + payload)
    ctypes.memmove(ctypes.cast(ctypes.c_char_p(message), ctypes.c_void_p).value, prefix, len(prefix))
    assert message[:len(prefix)] == prefix
    call = grpc_channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                                    response_deserializer=service_pb2.ModelInferResponse.FromString)
    try:
        with pytest.raises(grpc.RpcError) as info:
            call(message, timeout=60)
    finally:
        del message
    assert info.value.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED), info.value
    assert str(MAX_MESSAGE_BYTES) in info.value.details(), info.value.details()
    good_request_succeeds(grpc_client)


def test_large_message_under_the_limit_is_served(grpc_client):
    """A request well over gRPC's usual 4 MiB default message size (but under the server's 64 MiB) is served: all_types
    with 8 x 700 BYTES items of 1 KiB (~5.8 MB), echoed back."""
    arrays = all_types_arrays(10, 8, 700)
    arrays["bytes"] = np.array([[b"s%06d" % (r * 700 + c) + b"x" * 1017 for c in range(700)] for r in range(8)],
                               dtype=np.object_)
    res = grpc_client.infer("all_types", [grpc_input(f"in_{s}", a) for s, a in arrays.items()],
                            outputs=grpc_outputs(["out_bytes", "out_fp64"]))
    assert res.as_numpy("out_bytes").tolist() == arrays["bytes"].tolist()
    assert np.array_equal(res.as_numpy("out_fp64"), arrays["fp64"])


def test_many_bad_requests_then_good(grpc_client, grpc_stub):
    """A bounded burst of assorted failures leaves nothing behind: counts stay exact afterwards."""
    (before,) = grpc_client.get_inference_statistics("identity", "1").model_stats
    for i in range(20):
        kind = i % 4
        if kind == 0:
            expect_grpc_error(lambda: grpc_client.infer("identity", [grpc_input("input", fp32(i, (1, 255)))]),
                              "INVALID_ARGUMENT")
        elif kind == 1:
            expect_grpc_error(lambda: grpc_client.infer("identity", [grpc_input("input", fp32(i, (65, 256)))]),
                              "INVALID_ARGUMENT")
        elif kind == 2:
            req = with_raw(infer_request("identity", {"input": fp32(i, (1, 256))}), [b"\0" * 1023])
            expect_grpc_error(stub_call(grpc_stub, req), "INVALID_ARGUMENT")
        else:
            expect_grpc_error(lambda: grpc_client.infer("identity", [grpc_input("input", fp32(i, (1, 256)))],
                                                        model_version="2"), "NOT_FOUND")
    x = fp32(99, (4, 256))
    assert np.array_equal(grpc_client.infer("identity", [grpc_input("input", x)]).as_numpy("output"), x)
    (after,) = grpc_client.get_inference_statistics("identity", "1").model_stats
    assert after.inference_count - before.inference_count == 4
    good_request_succeeds(grpc_client)
