"""Inference on every demo model through tritonclient: JSON, binary and mixed tensors, request ids, output selection,
model versions, and numeric checks (exact passthrough, NumPy references computed from the ONNX files' own weights,
and a batch of N rows equal to N single-row requests)."""
import functools

import numpy as np
import pytest

from helpers import (
    assert_rows_close,
    fp32,
    make_input,
    onnx_initializers,
    outputs,
    recommender_inputs,
)

# (input binary?, output binary?) combinations.
MODES = [(True, True), (False, False), (True, False), (False, True)]
MODE_IDS = ["bin-in-bin-out", "json-in-json-out", "bin-in-json-out", "json-in-bin-out"]


@functools.lru_cache(maxsize=None)
def weights(model, version=1):
    return onnx_initializers(model, version)


def ref_dense(model, version, x, prefix, layers, relu_last=False):
    w = weights(model, version)
    h = x.astype(np.float64)
    for i in range(layers):
        h = h @ w[f"{prefix}_w{i}"].astype(np.float64) + w[f"{prefix}_b{i}"].astype(np.float64)
        if i < layers - 1 or relu_last:
            h = np.maximum(h, 0.0)
    return h


def ref_fraud(x, version):
    return ref_dense("fraud_mlp", version, x, "fc", 3)


def ref_wide(x):
    h = ref_dense("wide", 1, x, "wide", 4, relu_last=True)
    return h @ weights("wide")["head_w"].astype(np.float64)


def ref_recommender(ids, feats):
    w = weights("recommender")
    table = w["item_table"].astype(np.float64)
    emb = table[np.mod(ids, int(w["item_count"]))].mean(axis=1)
    joined = np.concatenate([emb, feats.astype(np.float64)], axis=1)
    return joined @ w["score_w"].astype(np.float64) + w["score_b"].astype(np.float64)


def ref_fixed_affine(x):
    w = weights("fixed_affine")
    return x.astype(np.float64) @ w["w"].astype(np.float64) + w["b"].astype(np.float64)


def infer_fraud(client, x, version="", binary_in=True, binary_out=True, request_id=""):
    res = client.infer(
        "fraud_mlp", [make_input("input", x, binary_in)], model_version=version,
        outputs=outputs(["logits"], binary_out), request_id=request_id,
    )
    return res


def infer_recommender(client, ids, feats, binary_in=True, binary_out=True, **kw):
    res = client.infer(
        "recommender", [make_input("item_ids", ids, binary_in), make_input("user_features", feats, binary_in)],
        outputs=outputs(["scores"], binary_out), **kw,
    )
    return res.as_numpy("scores")


# ---------------------------------------------------------------- identity: exact passthrough


@pytest.mark.parametrize("binary_in,binary_out", MODES, ids=MODE_IDS)
def test_identity_passthrough_is_exact(client, binary_in, binary_out):
    x = fp32(1, (5, 256))
    x[0, :4] = [0.0, -0.0, 1e-38, 3.4028235e38]
    res = client.infer("identity", [make_input("input", x, binary_in)], outputs=outputs(["output"], binary_out))
    out = res.as_numpy("output")
    assert out.dtype == np.float32 and out.shape == (5, 256)
    assert np.array_equal(out.view(np.uint32), x.view(np.uint32))
    resp = res.get_response()
    assert resp["model_name"] == "identity"
    assert resp["model_version"] == "1"
    (o,) = resp["outputs"]
    assert o["name"] == "output" and o["datatype"] == "FP32" and o["shape"] == [5, 256]
    assert ("binary_data_size" in o.get("parameters", {})) == binary_out
    assert ("data" in o) == (not binary_out)


def test_identity_without_requested_outputs_returns_all_binary(client):
    x = fp32(2, (2, 256))
    res = client.infer("identity", [make_input("input", x)])
    (o,) = res.get_response()["outputs"]
    assert o["parameters"]["binary_data_size"] == x.nbytes
    assert np.array_equal(res.as_numpy("output"), x)


def test_identity_max_batch(client):
    x = fp32(3, (64, 256))
    res = client.infer("identity", [make_input("input", x)], outputs=outputs(["output"]))
    assert np.array_equal(res.as_numpy("output"), x)


# ---------------------------------------------------------------- request ids


@pytest.mark.parametrize("request_id", ["req-1", "a b/c?d=e&f", "\u00fcnicode-\u2603", "x" * 200])
def test_request_id_is_echoed(client, request_id):
    res = client.infer("identity", [make_input("input", fp32(4, (1, 256)))], request_id=request_id)
    assert res.get_response()["id"] == request_id


def test_no_request_id_no_id(client):
    res = client.infer("identity", [make_input("input", fp32(4, (1, 256)))])
    assert res.get_response().get("id", "") == ""


# ---------------------------------------------------------------- fraud_mlp and versions


@pytest.mark.parametrize("binary_in,binary_out", MODES, ids=MODE_IDS)
def test_fraud_mlp_matches_reference(client, binary_in, binary_out):
    x = fp32(10, (4, 64))
    res = infer_fraud(client, x, binary_in=binary_in, binary_out=binary_out, request_id="fraud")
    logits = res.as_numpy("logits")
    assert logits.dtype == np.float32 and logits.shape == (4, 2)
    np.testing.assert_allclose(logits, ref_fraud(x, 2), rtol=1e-4, atol=1e-5)
    resp = res.get_response()
    assert resp["model_name"] == "fraud_mlp" and resp["model_version"] == "2" and resp["id"] == "fraud"


def test_fraud_mlp_versions(client):
    x = fp32(11, (3, 64))
    default = infer_fraud(client, x)
    v1 = infer_fraud(client, x, version="1")
    v2 = infer_fraud(client, x, version="2")
    assert default.get_response()["model_version"] == "2"
    assert v1.get_response()["model_version"] == "1"
    assert v2.get_response()["model_version"] == "2"
    assert np.array_equal(default.as_numpy("logits"), v2.as_numpy("logits"))
    assert not np.allclose(v1.as_numpy("logits"), v2.as_numpy("logits"), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(v1.as_numpy("logits"), ref_fraud(x, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v2.as_numpy("logits"), ref_fraud(x, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("version", ["1", "2"])
def test_fraud_mlp_batch_equals_single_rows(client, version):
    x = fp32(12, (16, 64))
    batched = infer_fraud(client, x, version=version).as_numpy("logits")
    singles = [infer_fraud(client, x[i:i + 1], version=version).as_numpy("logits") for i in range(len(x))]
    assert_rows_close(batched, singles)


def test_fraud_mlp_max_batch(client):
    x = fp32(13, (64, 64))
    logits = infer_fraud(client, x).as_numpy("logits")
    assert logits.shape == (64, 2)
    np.testing.assert_allclose(logits, ref_fraud(x, 2), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- recommender (two inputs, INT64 + FP32)


@pytest.mark.parametrize("binary_in,binary_out", MODES, ids=MODE_IDS)
def test_recommender_matches_reference(client, binary_in, binary_out):
    ids, feats = recommender_inputs(20, 3)
    ids[0, 0] = 999_999_937  # any id is valid: reduced modulo the table size
    scores = infer_recommender(client, ids, feats, binary_in, binary_out)
    assert scores.dtype == np.float32 and scores.shape == (3, 100)
    np.testing.assert_allclose(scores, ref_recommender(ids, feats), rtol=1e-4, atol=1e-5)


def test_recommender_mixed_input_encodings(client):
    """One input as JSON and the other as binary in the same request."""
    ids, feats = recommender_inputs(21, 2)
    res = client.infer(
        "recommender", [make_input("item_ids", ids, binary=False), make_input("user_features", feats, binary=True)],
        outputs=outputs(["scores"], binary=True),
    )
    np.testing.assert_allclose(res.as_numpy("scores"), ref_recommender(ids, feats), rtol=1e-4, atol=1e-5)
    res = client.infer(
        "recommender", [make_input("user_features", feats, binary=True), make_input("item_ids", ids, binary=False)],
        outputs=outputs(["scores"], binary=False),
    )
    np.testing.assert_allclose(res.as_numpy("scores"), ref_recommender(ids, feats), rtol=1e-4, atol=1e-5)


def test_recommender_batch_equals_single_rows(client):
    ids, feats = recommender_inputs(22, 32)
    batched = infer_recommender(client, ids, feats)
    singles = [infer_recommender(client, ids[i:i + 1], feats[i:i + 1]) for i in range(0, 32, 4)]
    assert_rows_close(batched[0:32:4], singles)


# ---------------------------------------------------------------- wide


def test_wide_matches_reference_and_batch_equals_single_rows(client):
    x = fp32(30, (6, 512))
    batched = client.infer("wide", [make_input("input", x)], outputs=outputs(["logits"])).as_numpy("logits")
    assert batched.shape == (6, 16) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, ref_wide(x), rtol=1e-3, atol=1e-4)
    singles = [
        client.infer("wide", [make_input("input", x[i:i + 1], binary=False)], outputs=outputs(["logits"], False)).as_numpy("logits")
        for i in range(len(x))
    ]
    assert_rows_close(batched, singles)


# ---------------------------------------------------------------- fixed_affine (no batch dimension)


@pytest.mark.parametrize("binary_in,binary_out", MODES, ids=MODE_IDS)
def test_fixed_affine_matches_weights(client, binary_in, binary_out):
    x = fp32(40, (8,))
    res = client.infer("fixed_affine", [make_input("x", x, binary_in)], outputs=outputs(["y"], binary_out), request_id="q1")
    y = res.as_numpy("y")
    assert y.shape == (4,) and y.dtype == np.float32
    np.testing.assert_allclose(y, ref_fixed_affine(x), rtol=1e-5, atol=1e-5)
    resp = res.get_response()
    assert resp["id"] == "q1" and resp["outputs"][0]["shape"] == [4]


def test_fixed_affine_is_deterministic(client):
    x = fp32(41, (8,))
    first = client.infer("fixed_affine", [make_input("x", x)]).as_numpy("y")
    for _ in range(3):
        again = client.infer("fixed_affine", [make_input("x", x, binary=False)], outputs=outputs(["y"], False)).as_numpy("y")
        np.testing.assert_allclose(again, first, rtol=1e-6, atol=0)

