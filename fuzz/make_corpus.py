#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/seed-*): small valid requests, responses and
metadata answers, several datatypes each, in the forms the targets read (see fuzz/src/lib.rs for the HTTP framing).
Only the standard library: the protobuf messages are encoded by hand below (field numbers from proto/inference.proto).

    python3 fuzz/make_corpus.py      # rewrites the seed-* files; files that libFuzzer added (hash names) are kept
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def j(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def framed(json_part, binary=b"", mode=1):
    """The fuzz input for an HTTP body with `Inference-Header-Content-Length` (mode 1; 0 is no header)."""
    if mode == 0:
        return b"\x00" + json_part + binary
    return bytes([mode]) + struct.pack("<H", len(json_part)) + json_part + binary


def bytes_elements(*items):
    """The V2 binary layout of BYTES: each element a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


# --- protobuf, by hand ---------------------------------------------------------------------------------------------

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def ld(field, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return key(field, 2) + varint(len(payload)) + payload


def packed_varints(field, values):
    return ld(field, b"".join(varint(v) for v in values)) if values else b""


def packed_fixed(field, fmt, values):
    return ld(field, b"".join(struct.pack(fmt, v) for v in values)) if values else b""


def param(name, kind, value):
    """A map<string, InferParameter> entry."""
    if kind == "bool":
        inner = key(1, 0) + varint(int(value))
    elif kind == "int64":
        inner = key(2, 0) + varint(value)
    elif kind == "string":
        inner = ld(3, value)
    elif kind == "double":
        inner = key(4, 1) + struct.pack("<d", value)
    else:
        inner = key(5, 0) + varint(value)
    return ld(1, name) + ld(2, inner)


def contents(bools=(), ints=(), int64s=(), uints=(), uint64s=(), fp32s=(), fp64s=(), byte_items=()):
    return (packed_varints(1, [int(b) for b in bools]) + packed_varints(2, ints) + packed_varints(3, int64s)
            + packed_varints(4, uints) + packed_varints(5, uint64s) + packed_fixed(6, "<f", fp32s)
            + packed_fixed(7, "<d", fp64s) + b"".join(ld(8, i) for i in byte_items))


def tensor(name, datatype, shape, typed=None, params=()):
    """InferInputTensor and InferOutputTensor have the same field numbers."""
    out = ld(1, name) + ld(2, datatype) + packed_varints(3, shape)
    out += b"".join(ld(4, p) for p in params)
    if typed is not None:
        out += ld(5, typed)
    return out


def infer_request(model, inputs, version="", id="", params=(), outputs=(), raw=()):
    out = ld(1, model) + (ld(2, version) if version else b"") + (ld(3, id) if id else b"")
    out += b"".join(ld(4, p) for p in params)
    out += b"".join(ld(5, t) for t in inputs)
    out += b"".join(ld(6, ld(1, o)) for o in outputs)
    out += b"".join(ld(7, r) for r in raw)
    return out


def infer_response(model, outputs, version="1", raw=()):
    out = ld(1, model) + ld(2, version) + b"".join(ld(5, t) for t in outputs) + b"".join(ld(6, r) for r in raw)
    return out


def metadata_response(name, versions, platform, inputs, outputs):
    tm = lambda n, d, s: ld(1, n) + ld(2, d) + packed_varints(3, s)
    return (ld(1, name) + b"".join(ld(2, v) for v in versions) + ld(3, platform)
            + b"".join(ld(4, tm(*t)) for t in inputs) + b"".join(ld(5, tm(*t)) for t in outputs))


# --- json_request ----------------------------------------------------------------------------------------------------

T = lambda name, datatype, shape, data: {"name": name, "datatype": datatype, "shape": shape, "data": data}

write("json_request", "fp32-nested", j({"inputs": [T("x", "FP32", [2, 2], [[1.5, -2.25], [3e-3, 4e10]])]}))
write("json_request", "params-outputs", j({
    "id": "req-1",
    "parameters": {"priority": 1, "timeout": 1500, "binary_data_output": True, "cache": False, "custom": "x"},
    "inputs": [T("ids", "INT64", [1, 3], [-9223372036854775808, 0, 9223372036854775807])],
    "outputs": [{"name": "prob", "parameters": {"binary_data": False}}, {"name": "label"}],
}))
write("json_request", "integers", j({"inputs": [
    T("u8", "UINT8", [3], [0, 7, 255]), T("u16", "UINT16", [2], [0, 65535]), T("u32", "UINT32", [1], [4294967295]),
    T("u64", "UINT64", [1], [18446744073709551615]), T("i8", "INT8", [2], [-128, 127]), T("i16", "INT16", [1], [-32768]),
    T("i32", "INT32", [2, 1], [[-1], [2147483647]]),
]}))
write("json_request", "bool-bytes", j({"inputs": [
    T("flags", "BOOL", [3], [True, False, True]), T("text", "BYTES", [2], ["héllo \"q\"\n", ""]),
]}))
write("json_request", "floats", j({"inputs": [
    T("h", "FP16", [3], [0.5, -65504, 6e-8]), T("d", "FP64", [2], [1.7976931348623157e308, -5e-324]),
]}))
write("json_request", "scalar-empty", j({"inputs": [T("s", "FP32", [], 2.5), T("z", "INT32", [0, 3], [])]}))
write("json_request", "spaced",
      '{ "inputs" : [ { "name" : "x" , "shape" : [ 1 , 2 ] , "datatype" : "INT32" , "data" : [ 1 , -2 ] } ] }\n')

# --- binary_request (framed HTTP bodies) -----------------------------------------------------------------------------

B = lambda name, datatype, shape, size: {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}

write("binary_request", "fp32-mixed", framed(
    j({"inputs": [B("x", "FP32", [2], 8), T("y", "INT32", [1], [5])]}), struct.pack("<2f", 1.5, -0.25)))
write("binary_request", "bytes", framed(
    j({"inputs": [B("s", "BYTES", [2], 13)], "parameters": {"binary_data_output": True}}), bytes_elements(b"abc", b"\xff\x00")))
write("binary_request", "two-binary", framed(
    j({"inputs": [B("a", "INT16", [2], 4), B("b", "BOOL", [1], 1), B("e", "UINT8", [0], 0)]}), b"\x01\x00\x02\x00\x01"))
write("binary_request", "fp16-fp64", framed(
    j({"inputs": [B("h", "FP16", [1, 2], 4), B("d", "FP64", [1], 8)], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}),
    struct.pack("<2e", 1.0, -2.0) + struct.pack("<d", 3.25)))
write("binary_request", "no-header", framed(j({"inputs": [T("x", "UINT64", [1], [42])]}), mode=0))
write("binary_request", "spaced-header", b"\x02" + framed(j({"inputs": [B("x", "INT8", [3], 3)]}), b"\x01\xfe\x7f")[1:])

# --- json_response (a remote server's framed answer) -----------------------------------------------------------------

R = lambda outputs, **kw: j(dict({"model_name": "m", "model_version": "1", "outputs": outputs}, **kw))

write("json_response", "json-data", framed(R([T("y", "FP32", [3], [0.5, None, -1e-3]), T("c", "INT64", [1], [7])], id="r1"), mode=0))
write("json_response", "binary", framed(R([B("y", "FP32", [2], 8), B("s", "BYTES", [1], 6)]), struct.pack("<2f", 1, 2) + bytes_elements(b"ok")))
write("json_response", "mixed", framed(R([B("b", "BOOL", [2], 2), T("u", "UINT16", [2], [1, 65535]), T("t", "BYTES", [1], ["x"])]), b"\x00\x01"))
write("json_response", "error-body", framed(b'{"error":"model is not ready"}', mode=0))

# --- grpc_request (protobuf ModelInferRequest) -----------------------------------------------------------------------

write("grpc_request", "raw-fp32", infer_request("m", [tensor("x", "FP32", [1, 2])], raw=[struct.pack("<2f", 1.5, -2)]))
write("grpc_request", "typed-ints", infer_request("m", [
    tensor("i8", "INT8", [2], contents(ints=[-128, 127])), tensor("i64", "INT64", [1], contents(int64s=[-(1 << 63)])),
    tensor("u16", "UINT16", [2], contents(uints=[0, 65535])), tensor("u64", "UINT64", [1], contents(uint64s=[(1 << 64) - 1])),
], version="2", id="req-7"))
write("grpc_request", "typed-floats-bool-bytes", infer_request("m", [
    tensor("f", "FP32", [2], contents(fp32s=[0.5, -3])), tensor("d", "FP64", [1], contents(fp64s=[1e300])),
    tensor("b", "BOOL", [3], contents(bools=[True, False, True])), tensor("s", "BYTES", [2], contents(byte_items=[b"abc", b""])),
], outputs=["y", "z"]))
write("grpc_request", "params", infer_request("m", [tensor("x", "UINT8", [0])], raw=[b""], params=[
    param("priority", "uint64", 2), param("timeout", "int64", 2500), param("cache", "bool", False), param("note", "string", "x"),
]))
write("grpc_request", "raw-fp16-bytes", infer_request("m", [tensor("h", "FP16", [2]), tensor("s", "BYTES", [1])],
                                                      raw=[struct.pack("<2e", 1, -1), bytes_elements(b"hi")]))

# --- grpc_response (protobuf ModelInferResponse) ---------------------------------------------------------------------

write("grpc_response", "raw", infer_response("m", [tensor("y", "FP32", [2]), tensor("s", "BYTES", [1])],
                                             raw=[struct.pack("<2f", 0.25, 4), bytes_elements(b"label")]))
write("grpc_response", "typed", infer_response("m", [
    tensor("y", "FP64", [1, 1], contents(fp64s=[2.5])), tensor("c", "INT32", [2], contents(ints=[-1, 1])),
    tensor("b", "BOOL", [1], contents(bools=[True])), tensor("u", "UINT32", [1], contents(uints=[4294967295])),
]))

# --- model_metadata (JSON answers and a protobuf ModelMetadataResponse) ----------------------------------------------

write("model_metadata", "sluice", j({
    "name": "fraud_mlp", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
    "outputs": [{"name": "prob", "datatype": "FP32", "shape": [-1, 1]}, {"name": "label", "datatype": "BYTES", "shape": [-1]}],
    "parameters": {"execution_provider": "cpu"},
}))
write("model_metadata", "triton", j({
    "name": "simple", "platform": "tensorflow_graphdef",
    "inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}, {"name": "INPUT1", "datatype": "BOOL", "shape": []}],
    "outputs": [],
}))
write("model_metadata", "grpc", metadata_response("m", ["3"], "onnxruntime_onnx",
                                                  [("x", "FP16", [-1, 4]), ("t", "BYTES", [-1])], [("s", "INT64", [])]))
