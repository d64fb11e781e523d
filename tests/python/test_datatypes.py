"""Every V2 datatype end to end through the all_types model (one Identity per datatype), as JSON and as binary tensors:
values come back exactly, including each integer type's extremes, FP16, BOOL and BYTES; output selection returns exactly
the outputs asked for."""
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from helpers import ALL_TYPES, all_types_arrays, as_bytes_array, expect_error, make_input, outputs

SUFFIXES = list(ALL_TYPES)
FLOATS = {"fp16", "fp32", "fp64"}


def all_inputs(arrays, binary=True):
    """The 13 inputs for all_types; `binary` is a bool or a dict suffix -> bool."""
    pick = binary if isinstance(binary, dict) else {s: binary for s in arrays}
    return [make_input(f"in_{s}", a, pick[s]) for s, a in arrays.items()]


def assert_same(suffix, got, want):
    datatype, dtype = ALL_TYPES[suffix]
    assert got.shape == want.shape, (suffix, got.shape, want.shape)
    if suffix == "bytes":
        assert as_bytes_array(got).tolist() == want.tolist(), suffix
    else:
        assert got.dtype == np.dtype(dtype), (suffix, got.dtype)
        if suffix in FLOATS:  # bit-exact, so -0.0 and NaN payloads count too
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), (suffix, got, want)
        else:
            assert np.array_equal(got, want), (suffix, got, want)


@pytest.mark.parametrize("binary_in", [True, False], ids=["bin-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["bin-out", "json-out"])
def test_every_datatype_round_trips(client, binary_in, binary_out):
    arrays = all_types_arrays(100, 3, 5)
    res = client.infer("all_types", all_inputs(arrays, binary_in),
                       outputs=outputs([f"out_{s}" for s in SUFFIXES], binary_out), request_id="types")
    resp = res.get_response()
    assert resp["id"] == "types"
    assert [o["name"] for o in resp["outputs"]] == [f"out_{s}" for s in SUFFIXES]
    for o in resp["outputs"]:
        suffix = o["name"][len("out_"):]
        assert o["datatype"] == ALL_TYPES[suffix][0]
        assert o["shape"] == [3, 5]
    for suffix in SUFFIXES:
        assert_same(suffix, res.as_numpy(f"out_{suffix}"), arrays[suffix])


def test_mixed_input_encodings(client):
    """Odd-numbered inputs as JSON, the rest binary, in one request; outputs alternate too."""
    arrays = all_types_arrays(101, 2, 4)
    binary = {s: i % 2 == 0 for i, s in enumerate(SUFFIXES)}
    reqs = [o for i, s in enumerate(SUFFIXES) for o in outputs([f"out_{s}"], i % 3 != 0)]
    res = client.infer("all_types", all_inputs(arrays, binary), outputs=reqs)
    for i, o in enumerate(res.get_response()["outputs"]):
        assert ("data" in o) == (i % 3 == 0), o["name"]
    for suffix in SUFFIXES:
        assert_same(suffix, res.as_numpy(f"out_{suffix}"), arrays[suffix])


def test_all_outputs_binary_when_none_requested(client):
    arrays = all_types_arrays(102, 2, 2)
    res = client.infer("all_types", all_inputs(arrays))
    outs = res.get_response()["outputs"]
    assert sorted(o["name"] for o in outs) == sorted(f"out_{s}" for s in SUFFIXES)
    for o in outs:
        assert "binary_data_size" in o["parameters"] and "data" not in o
    for suffix in SUFFIXES:
        assert_same(suffix, res.as_numpy(f"out_{suffix}"), arrays[suffix])


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("binary_out", [True, False], ids=["bin-out", "json-out"])
def test_output_selection_single(client, suffix, binary_out):
    arrays = all_types_arrays(103, 2, 3)
    res = client.infer("all_types", all_inputs(arrays), outputs=outputs([f"out_{suffix}"], binary_out))
    outs = res.get_response()["outputs"]
    assert [o["name"] for o in outs] == [f"out_{suffix}"]
    assert_same(suffix, res.as_numpy(f"out_{suffix}"), arrays[suffix])
    other = "fp32" if suffix != "fp32" else "int8"
    assert res.as_numpy(f"out_{other}") is None


def test_output_selection_subset_in_requested_order(client):
    arrays = all_types_arrays(104, 1, 6)
    wanted = ["out_bytes", "out_fp16", "out_bool"]
    res = client.infer("all_types", all_inputs(arrays), outputs=outputs(wanted))
    assert [o["name"] for o in res.get_response()["outputs"]] == wanted
    for name in wanted:
        assert_same(name[4:], res.as_numpy(name), arrays[name[4:]])


def test_float_specials_round_trip_binary(client):
    arrays = all_types_arrays(105, 2, 4)
    for suffix in FLOATS:
        flat = arrays[suffix].reshape(-1)
        flat[2:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, np.finfo(arrays[suffix].dtype).smallest_subnormal]
    res = client.infer("all_types", all_inputs(arrays), outputs=outputs([f"out_{s}" for s in sorted(FLOATS)]))
    for suffix in FLOATS:
        assert_same(suffix, res.as_numpy(f"out_{suffix}"), arrays[suffix])


def test_fp16_json_values(client):
    """FP16 through JSON: every value the client sends is a float16 and comes back as the same float16."""
    arrays = all_types_arrays(106, 1, 8)
    arrays["fp16"] = np.array([[0.0, -0.0, 1.0, -2.5, 65504.0, -65504.0, 6.1035156e-05, 5.9604645e-08]], np.float16)
    res = client.infer("all_types", all_inputs(arrays, False), outputs=outputs(["out_fp16"], False))
    assert_same("fp16", res.as_numpy("out_fp16"), arrays["fp16"])


def test_bool_values(client):
    arrays = all_types_arrays(107, 2, 3)
    arrays["bool"] = np.array([[True, False, True], [False, False, True]])
    for binary in (True, False):
        res = client.infer("all_types", all_inputs(arrays, binary), outputs=outputs(["out_bool"], binary))
        assert_same("bool", res.as_numpy("out_bool"), arrays["bool"])


def test_bytes_utf8_and_lengths(client):
    arrays = all_types_arrays(108, 2, 4)
    arrays["bytes"] = np.array(
        [[b"", b"a", "\u00e9\u2603\U0001F600".encode(), b"\"quoted\" \\ back"],
         [b"x" * 5000, b" leading and trailing ", b"line\nbreak\ttab", b"{\"json\": [1,2]}"]],
        dtype=np.object_,
    )
    for binary_in in (True, False):
        for binary_out in (True, False):
            res = client.infer("all_types", all_inputs(arrays, binary_in), outputs=outputs(["out_bytes"], binary_out))
            assert_same("bytes", res.as_numpy("out_bytes"), arrays["bytes"])


def test_bytes_non_utf8_round_trip_binary(client):
    """BYTES are bytes, not text: a value that is not UTF-8 must come back unchanged (or be refused with a 400
    naming the input) - never silently altered."""
    arrays = all_types_arrays(109, 1, 3)
    arrays["bytes"] = np.array([[b"\xff\xfe", b"ok \x80\x81", b"\xc3\x28"]], dtype=np.object_)
    try:
        res = client.infer("all_types", all_inputs(arrays), outputs=outputs(["out_bytes"]))
    except InferenceServerException as err:
        assert err.status() == "400" and "in_bytes" in err.message(), (err.status(), err.message())
        return
    assert_same("bytes", res.as_numpy("out_bytes"), arrays["bytes"])


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "json"])
def test_bytes_with_nul_byte(client, binary):
    """A BYTES element containing a NUL byte must round-trip, or be refused as a bad request (400) naming the input;
    it must not be a backend failure (500)."""
    arrays = all_types_arrays(110, 1, 2)
    arrays["bytes"] = np.array([[b"a\x00b", b"\x00"]], dtype=np.object_)
    try:
        res = client.infer("all_types", all_inputs(arrays, binary), outputs=outputs(["out_bytes"], binary))
    except InferenceServerException as err:
        assert err.status() == "400" and "in_bytes" in err.message(), (err.status(), err.message())
        return
    assert_same("bytes", res.as_numpy("out_bytes"), arrays["bytes"])


def test_empty_inner_dimension(client):
    arrays = all_types_arrays(111, 2, 0)
    res = client.infer("all_types", all_inputs(arrays))
    for suffix in SUFFIXES:
        assert res.as_numpy(f"out_{suffix}").shape == (2, 0)


def test_full_batch_of_every_type(client):
    arrays = all_types_arrays(112, 8, 2)
    res = client.infer("all_types", all_inputs(arrays))
    for suffix in SUFFIXES:
        assert_same(suffix, res.as_numpy(f"out_{suffix}"), arrays[suffix])


def test_out_of_range_json_value_is_rejected(client):
    """JSON numbers that do not fit the declared datatype are a 400 naming the input (tritonclient lets them through
    only when the data list is edited by hand)."""
    arrays = all_types_arrays(113, 1, 2)
    inputs = all_inputs(arrays, False)
    int8 = next(i for i in inputs if i.name() == "in_int8")
    int8._data = [300, 1]
    expect_error(lambda: client.infer("all_types", inputs), 400, "in_int8", "300")
    uint16 = next(i for i in inputs if i.name() == "in_uint16")
    int8._data = [1, 1]
    uint16._data = [-1, 1]
    expect_error(lambda: client.infer("all_types", inputs), 400, "in_uint16")
