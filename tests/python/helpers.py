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
