"""Errors as tritonclient sees them: InferenceServerException with the HTTP status and a message naming the problem.
After every kind of bad request the server still answers a good one."""
import numpy as np
import pytest

from helpers import expect_error, fp32, make_input, outputs, recommender_inputs


def good_request_succeeds(client):
    x = fp32(7, (2, 64))
    res = client.infer("fraud_mlp", [make_input("input", x)], outputs=outputs(["logits"]))
    assert res.as_numpy("logits").shape == (2, 2)
    assert client.is_server_live() and client.is_server_ready()


def rec_inputs(rows, binary=True):
    ids, feats = recommender_inputs(8, rows)
    return [make_input("item_ids", ids, binary), make_input("user_features", feats, binary)]


def mismatched(name, array, shape, binary):
    """An input whose declared shape disagrees with its data (tritonclient checks this itself unless set_shape is used)."""
    inp = make_input(name, array, binary)
    inp.set_shape(shape)
    return inp


# Each case: (id, callable(client) -> raises, status, fragments the message must contain).
CASES = [
    ("unknown-model", lambda c: c.infer("no_such_model", [make_input("input", fp32(0, (1, 64)))]), 404, ["no_such_model"]),
    ("unknown-version", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)))], model_version="7"), 404,
     ["fraud_mlp", "7"]),
    ("non-numeric-version", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)))], model_version="latest"),
     400, ["latest"]),
    ("wrong-input-name", lambda c: c.infer("fraud_mlp", [make_input("features", fp32(0, (1, 64)))]), 400, ["features"]),
    ("missing-input", lambda c: c.infer("recommender", rec_inputs(1)[1:]), 400, ["item_ids"]),
    ("extra-input", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64))), make_input("bogus", fp32(0, (1, 64)))]),
     400, ["bogus"]),
    ("duplicate-input", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)))] * 2), 400, ["input"]),
    ("wrong-dtype-binary", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)).astype(np.float64))]), 400,
     ["input", "FP64", "FP32"]),
    ("wrong-dtype-json", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)).astype(np.float64), False)]), 400,
     ["input", "FP64", "FP32"]),
    ("wrong-dtype-int", lambda c: c.infer("recommender", [make_input("item_ids", np.zeros((1, 20), np.int32)), rec_inputs(1)[1]]),
     400, ["item_ids", "INT32", "INT64"]),
    ("wrong-shape", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 63)))]), 400, ["input", "63"]),
    ("wrong-rank", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (64,)))]), 400, ["input"]),
    ("rank-3", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 1, 64)))]), 400, ["input"]),
    ("zero-batch", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (0, 64)))]), 400, ["input"]),
    ("fixed-shape-with-batch", lambda c: c.infer("fixed_affine", [make_input("x", fp32(0, (1, 8)))]), 400, ["x"]),
    ("fixed-shape-wrong-len", lambda c: c.infer("fixed_affine", [make_input("x", fp32(0, (9,)))]), 400, ["x"]),
    ("over-max-batch", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (65, 64)))]), 400, ["65", "64"]),
    ("over-max-batch-recommender", lambda c: c.infer("recommender", rec_inputs(33)), 400, ["33", "32"]),
    ("over-max-batch-identity-json", lambda c: c.infer("identity", [make_input("input", fp32(0, (65, 256)), False)]), 400,
     ["65", "64"]),
    ("shape-data-mismatch-binary", lambda c: c.infer("fraud_mlp", [mismatched("input", fp32(0, (1, 64)), [2, 64], True)]), 400,
     ["input"]),
    ("shape-data-mismatch-json", lambda c: c.infer("fraud_mlp", [mismatched("input", fp32(0, (1, 64)), [2, 64], False)]), 400,
     ["input"]),
    ("data-longer-than-shape-json", lambda c: c.infer("fraud_mlp", [mismatched("input", fp32(0, (2, 64)), [1, 64], False)]), 400,
     ["input"]),
    ("batch-rows-disagree", lambda c: c.infer("recommender", [rec_inputs(2)[0], rec_inputs(3)[1]]), 400,
     ["item_ids", "user_features"]),
    ("unknown-output", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)))], outputs=outputs(["probs"])), 400,
     ["probs"]),
    ("duplicate-output", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)))], outputs=outputs(["logits"] * 2)),
     400, ["logits"]),
    ("priority-out-of-range", lambda c: c.infer("recommender", rec_inputs(1), priority=3), 400, ["priority"]),
    ("priority-on-single-level-model", lambda c: c.infer("fraud_mlp", [make_input("input", fp32(0, (1, 64)))], priority=2), 400,
     ["priority"]),
]


@pytest.mark.parametrize("call,status,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(client, call, status, fragments):
    err = expect_error(lambda: call(client), status, *fragments)
    assert err.message(), "the error body names the problem"
    good_request_succeeds(client)


def test_unknown_model_ready_is_false_not_an_error(client):
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("fraud_mlp", "7") is False


def test_error_status_is_a_string_code(client):
    err = expect_error(lambda: client.infer("no_such_model", [make_input("input", fp32(0, (1, 64)))]), 404)
    assert "no_such_model" in str(err)
    assert "[404]" in str(err)


def test_many_bad_requests_then_good(client):
    """A bounded burst of assorted failures does not leave anything behind: counts stay exact afterwards."""
    for i in range(20):
        kind = i % 4
        if kind == 0:
            expect_error(lambda: client.infer("identity", [make_input("input", fp32(i, (1, 255)))]), 400)
        elif kind == 1:
            expect_error(lambda: client.infer("identity", [make_input("input", fp32(i, (65, 256)))]), 400)
        elif kind == 2:
            expect_error(lambda: client.infer("identity", [mismatched("input", fp32(i, (1, 256)), [3, 256], True)]), 400)
        else:
            expect_error(lambda: client.infer("identity", [make_input("input", fp32(i, (1, 256)))], model_version="2"), 404)
    x = fp32(99, (4, 256))
    assert np.array_equal(client.infer("identity", [make_input("input", x)]).as_numpy("output"), x)
    good_request_succeeds(client)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_body_is_refused(client, algorithm):
    """The server does not accept compressed request bodies: 415 naming the encoding."""
    expect_error(lambda: client.infer("identity", [make_input("input", fp32(0, (1, 256)))],
                                      request_compression_algorithm=algorithm), 415, algorithm)
    good_request_succeeds(client)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_response_may_be_asked_for(client, algorithm):
    """Accept-Encoding is only a preference: the answer (compressed or not) decodes to the right values."""
    x = fp32(1, (3, 256))
    res = client.infer("identity", [make_input("input", x)], response_compression_algorithm=algorithm)
    assert np.array_equal(res.as_numpy("output"), x)
