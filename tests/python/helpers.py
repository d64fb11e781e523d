"""Small helpers shared by the conformance tests (plain functions; the fixtures live in conftest.py)."""
import os

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(REPO, "models")

# all_types: suffix -> (V2 datatype, numpy dtype); every input is in_<suffix> [batch, n], every output out_<suffix>.
ALL_TYPES = {
    "bool": ("BOOL", np.bool_),
    "int8": ("INT8", np.int8),
    "int16": ("INT16", np.int16),
    "int32": ("INT32", np.int32),
    "int64": ("INT64", np.int64),
    "uint8": ("UINT8", np.uint8),
    "uint16": ("UINT16", np.uint16),
    "uint32": ("UINT32", np.uint32),
    "uint64": ("UINT64", np.uint64),
    "fp16": ("FP16", np.float16),
    "fp32": ("FP32", np.float32),
    "fp64": ("FP64", np.float64),
    "bytes": ("BYTES", np.object_),
}


def make_input(name, array, binary=True, datatype=None):
    """An InferInput carrying `array` (its datatype taken from the array unless given), as binary or JSON data."""
    if datatype is None:
        datatype = "BYTES" if array.dtype == np.object_ else np_to_v2(array.dtype)
    inp = httpclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary)
    return inp


def np_to_v2(dtype):
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype))


def outputs(names, binary=True):
    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


def rng(seed):
    return np.random.default_rng(seed)


def fp32(seed, shape):
    return rng(seed).standard_normal(shape).astype(np.float32)


def recommender_inputs(seed, rows):
    r = rng(seed)
    ids = r.integers(0, 5000, size=(rows, 20), dtype=np.int64)
    feats = r.standard_normal((rows, 32)).astype(np.float32)
    return ids, feats


def all_types_arrays(seed, rows, n):
    """One array per all_types input, [rows, n], covering each dtype's extremes where they fit. BYTES values are UTF-8
    without NUL bytes: ONNX string tensors hold text, and the server refuses anything else with a 400."""
    r = rng(seed)
    arrays = {}
    for suffix, (_, dt) in ALL_TYPES.items():
        if suffix == "bool":
            a = r.integers(0, 2, size=(rows, n)).astype(np.bool_)
        elif suffix == "bytes":
            words = [b"", b"a", b"sluice", b"\x01\x7f control", "h\u00e9llo \u2603".encode("utf-8"), b"x" * 300]
            flat = [words[int(i) % len(words)] + str(k).encode() for k, i in enumerate(r.integers(0, 1000, rows * n))]
            a = np.array(flat, dtype=np.object_).reshape(rows, n)
        elif np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            a = r.integers(info.min, info.max, size=(rows, n), dtype=dt, endpoint=True)
            flat = a.reshape(-1)
            if flat.size > 1:
                flat[0], flat[1] = info.min, info.max
        else:
            a = (r.standard_normal((rows, n)) * 100).astype(dt)
            flat = a.reshape(-1)
            if flat.size > 1:
                flat[0], flat[1] = np.finfo(dt).max, np.finfo(dt).tiny
        arrays[suffix] = a
    return arrays


def as_bytes_array(array):
    """Normalises a BYTES output to an object array of bytes (JSON outputs come back as str)."""
    flat = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in array.reshape(-1)]
    return np.array(flat, dtype=np.object_).reshape(array.shape)


def expect_error(fn, status, *fragments):
    """Calls fn, which must raise InferenceServerException with HTTP `status` and a message containing every fragment."""
    with pytest.raises(InferenceServerException) as info:
        fn()
    err = info.value
    assert err.status() == str(status), f"status {err.status()!r}, expected {status}: {err.message()}"
    message = err.message() or ""
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in error message {message!r}"
    return err


def assert_rows_close(batched, singles, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(batched, np.concatenate(singles, axis=0), rtol=rtol, atol=atol)


def onnx_initializers(model, version=1):
    """The initializers of models/<model>/<version>/model.onnx, as numpy arrays by name."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(os.path.join(MODELS, model, str(version), "model.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


# ---------------------------------------------------------------- gRPC (tritonclient.grpc and the generated stubs)
# tritonclient.grpc is imported inside the functions, so the HTTP tests still run where the gRPC client is missing.

# V2 datatype -> the typed `contents` field of InferTensorContents that carries it (FP16 has none: raw only).
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def v2_datatype(array):
    return "BYTES" if array.dtype == np.object_ else np_to_v2(array.dtype)


def grpc_input(name, array, datatype=None):
    """A tritonclient.grpc InferInput carrying `array` (sent as raw_input_contents)."""
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(name, list(array.shape), datatype or v2_datatype(array))
    inp.set_data_from_numpy(array)
    return inp


def grpc_outputs(names, **kwargs):
    import tritonclient.grpc as grpcclient

    return [grpcclient.InferRequestedOutput(n, **kwargs) for n in names]


def tensor_bytes(array):
    """The V2 raw (binary) encoding of an array: little-endian elements, or 4-byte-length-prefixed items for BYTES."""
    if array.dtype == np.object_:
        from tritonclient.utils import serialize_byte_tensor

        return serialize_byte_tensor(as_bytes_array(array)).item() if array.size else b""
    return np.ascontiguousarray(array).tobytes()  # x86-64 and aarch64 are little-endian


def grpc_raw_outputs(result):
    """name -> raw bytes of every output of a tritonclient.grpc InferResult (or a ModelInferResponse)."""
    response = result.get_response() if hasattr(result, "get_response") else result
    assert len(response.raw_output_contents) == len(response.outputs), "one raw_output_contents entry per output"
    return {o.name: bytes(raw) for o, raw in zip(response.outputs, response.raw_output_contents)}


def infer_request(model, arrays, typed=False, version="", request_id="", outputs=(), parameters=None):
    """A ModelInferRequest (generated stubs) for `arrays` (name -> numpy array): each input as raw_input_contents, or as
    typed `contents` where `typed` says so (True: every input; or a collection of input names). `parameters`: name ->
    int (int64_param), str (string_param) or bool (bool_param)."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in arrays.items():
        t = req.inputs.add()
        t.name, t.datatype = name, v2_datatype(array)
        t.shape.extend(array.shape)
        if typed is True or (typed and name in typed):
            values = array.reshape(-1).tolist()
            getattr(t.contents, TYPED_FIELD[t.datatype]).extend(values)
        else:
            req.raw_input_contents.append(tensor_bytes(array))
    for name in outputs:
        req.outputs.add().name = name
    for key, value in (parameters or {}).items():
        param = req.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        else:
            param.string_param = value
    return req


def expect_grpc_deadline(fn):
    """Calls fn, which must fail because its deadline passed: DEADLINE_EXCEEDED (from Sluice or the client library), or
    the CANCELLED "Timeout expired" that gRPC core reports when a very short deadline fires before the call is under way.
    Returns (status, message)."""
    try:
        fn()
    except InferenceServerException as err:
        status, message = err.status(), err.message() or ""
    else:
        pytest.fail("no error; expected the deadline to pass")
    assert is_deadline_status(status, message), f"status {status!r}: {message}"
    return status, message


def is_deadline_status(status, message):
    """Whether a gRPC failure means the call's deadline passed (see expect_grpc_deadline)."""
    client_side = status == "StatusCode.CANCELLED" and "Timeout expired" in message
    return status == "StatusCode.DEADLINE_EXCEEDED" or client_side


def expect_grpc_error(fn, code, *fragments):
    """Calls fn, which must raise tritonclient's InferenceServerException (or a grpc.RpcError from the stubs) with gRPC
    status `code` (e.g. "INVALID_ARGUMENT") and a message containing every fragment; returns the message."""
    import grpc

    try:
        fn()
    except InferenceServerException as err:
        status, message = err.status(), err.message() or ""
    except grpc.RpcError as err:
        status, message = str(err.code()), err.details() or ""
    else:
        pytest.fail(f"no error; expected {code}")
    assert status == f"StatusCode.{code}", f"status {status!r}, expected {code}: {message}"
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in error message {message!r}"
    return message
