"""Several requests in flight at once, which the server batches dynamically: every caller gets exactly its own rows back.
Two clients: tritonclient.http's async_infer (gevent; note that it sleeps 10 ms after sending each request, so it only
overlaps requests that take longer than that) and tritonclient.http.aio (asyncio + aiohttp, truly concurrent).
Also priority levels, the request `timeout` parameter and queue backpressure (429) as tritonclient reports it."""
import asyncio

import numpy as np
import pytest
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from helpers import all_types_arrays, expect_error, fp32, make_input, outputs, recommender_inputs


def _stats(client, model, version="1"):
    (s,) = client.get_inference_statistics(model, version)["model_stats"]
    return s


def run_aio(server, body):
    """Runs `await body(aio_client)` on a fresh event loop with a fresh tritonclient.http.aio client."""

    async def main():
        client = aioclient.InferenceServerClient(server, conn_limit=64)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


async def gather_outcomes(calls):
    """Awaits every call; each outcome is an InferResult or the InferenceServerException it raised."""
    return await asyncio.gather(*calls, return_exceptions=True)


def test_async_identity_rows_split_back_exactly(client):
    """24 outstanding async_infer handles for requests of 1..4 rows: each result holds exactly that request's rows."""
    before = _stats(client, "identity")
    arrays = [fp32(200 + i, (1 + i % 4, 256)) for i in range(24)]
    pending = [
        client.async_infer("identity", [make_input("input", a, binary=i % 2 == 0)], request_id=f"r{i}",
                           outputs=outputs(["output"], binary=i % 3 != 0))
        for i, a in enumerate(arrays)
    ]
    for i, (a, p) in enumerate(zip(arrays, pending)):
        res = p.get_result(timeout=30)
        assert res.get_response()["id"] == f"r{i}"
        assert np.array_equal(res.as_numpy("output"), a), i
    after = _stats(client, "identity")
    assert after["inference_count"] - before["inference_count"] == sum(len(a) for a in arrays)
    executions = after["execution_count"] - before["execution_count"]
    assert 1 <= executions <= len(arrays)


def test_async_fraud_mlp_matches_one_batch(client):
    x = fp32(210, (32, 64))
    batched = client.infer("fraud_mlp", [make_input("input", x)]).as_numpy("logits")
    pending = [client.async_infer("fraud_mlp", [make_input("input", x[i:i + 1])], request_id=str(i)) for i in range(len(x))]
    for i, p in enumerate(pending):
        res = p.get_result(timeout=30)
        assert res.get_response()["id"] == str(i)
        np.testing.assert_allclose(res.as_numpy("logits"), batched[i:i + 1], rtol=1e-5, atol=1e-6)


def test_aio_versions_do_not_mix(client, server):
    """Requests for versions 1 and 2 in flight together are never batched across versions."""
    x = fp32(211, (1, 64))
    ref = {v: client.infer("fraud_mlp", [make_input("input", x)], model_version=v).as_numpy("logits") for v in ("1", "2")}
    versions = ["1", "2", ""] * 8

    async def body(aio):
        return await gather_outcomes([aio.infer("fraud_mlp", [make_input("input", x)], model_version=v) for v in versions])

    for v, res in zip(versions, run_aio(server, body)):
        assert not isinstance(res, BaseException), res
        assert res.get_response()["model_version"] == (v or "2")
        np.testing.assert_allclose(res.as_numpy("logits"), ref[v or "2"], rtol=1e-5, atol=1e-6)


def test_async_mixed_models(client):
    ids, feats = recommender_inputs(230, 2)
    rec_ref = client.infer("recommender", [make_input("item_ids", ids), make_input("user_features", feats)]).as_numpy("scores")
    types = all_types_arrays(231, 2, 3)
    ident = fp32(232, (3, 256))
    jobs = []
    for i in range(4):
        jobs.append(("rec", client.async_infer("recommender", [make_input("item_ids", ids), make_input("user_features", feats)])))
        jobs.append(("types", client.async_infer("all_types", [make_input(f"in_{s}", a) for s, a in types.items()],
                                                 outputs=outputs(["out_int64", "out_bytes"]))))
        jobs.append(("ident", client.async_infer("identity", [make_input("input", ident)])))
        jobs.append(("fixed", client.async_infer("fixed_affine", [make_input("x", fp32(233, (8,)))])))
    fixed_ref = client.infer("fixed_affine", [make_input("x", fp32(233, (8,)))]).as_numpy("y")
    for kind, p in jobs:
        res = p.get_result(timeout=30)
        if kind == "rec":
            np.testing.assert_allclose(res.as_numpy("scores"), rec_ref, rtol=1e-5, atol=1e-6)
        elif kind == "types":
            assert np.array_equal(res.as_numpy("out_int64"), types["int64"])
            assert res.as_numpy("out_bytes").tolist() == types["bytes"].tolist()
        elif kind == "ident":
            assert np.array_equal(res.as_numpy("output"), ident)
        else:
            np.testing.assert_allclose(res.as_numpy("y"), fixed_ref, rtol=1e-6, atol=0)


def test_async_error_is_raised_by_get_result(client):
    ok = client.async_infer("identity", [make_input("input", fp32(240, (1, 256)))])
    bad = client.async_infer("identity", [make_input("input", fp32(241, (1, 128)))])
    missing = client.async_infer("no_such_model", [make_input("input", fp32(242, (1, 256)))])
    assert ok.get_result(timeout=30).as_numpy("output").shape == (1, 256)
    with pytest.raises(InferenceServerException) as info:
        bad.get_result(timeout=30)
    assert info.value.status() == "400" and "input" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        missing.get_result(timeout=30)
    assert info.value.status() == "404"


# ---------------------------------------------------------------- truly concurrent requests (tritonclient.http.aio)


def test_aio_identity_rows_split_back_exactly(client, server):
    before = _stats(client, "identity")
    arrays = [fp32(300 + i, (1 + i % 5, 256)) for i in range(40)]

    async def body(aio):
        return await gather_outcomes([
            aio.infer("identity", [make_input("input", a, binary=i % 2 == 0)], request_id=f"a{i}",
                      outputs=outputs(["output"], binary=i % 3 != 0))
            for i, a in enumerate(arrays)
        ])

    results = run_aio(server, body)
    for i, (a, res) in enumerate(zip(arrays, results)):
        assert not isinstance(res, BaseException), res
        assert res.get_response()["id"] == f"a{i}"
        assert np.array_equal(res.as_numpy("output"), a), i
    after = _stats(client, "identity")
    rows = sum(len(a) for a in arrays)
    assert after["inference_count"] - before["inference_count"] == rows
    assert 1 <= after["execution_count"] - before["execution_count"] <= len(arrays)
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in after["batch_stats"]) == after["inference_count"]


def test_aio_wide_batches_concurrent_requests(client, server):
    """wide waits up to 5 ms for a fuller batch, so 16 single-row requests sent together share executions, and each
    row's result equals the same row computed in one 16-row request."""
    x = fp32(310, (16, 512))
    batched = client.infer("wide", [make_input("input", x)]).as_numpy("logits")
    before = _stats(client, "wide")

    async def body(aio):
        return await gather_outcomes([aio.infer("wide", [make_input("input", x[i:i + 1])]) for i in range(len(x))])

    results = run_aio(server, body)
    for i, res in enumerate(results):
        assert not isinstance(res, BaseException), res
        np.testing.assert_allclose(res.as_numpy("logits"), batched[i:i + 1], rtol=1e-5, atol=1e-6)
    after = _stats(client, "wide")
    assert after["inference_count"] - before["inference_count"] == 16
    executions = after["execution_count"] - before["execution_count"]
    assert executions < 16, f"{executions} executions for 16 concurrent single-row requests: nothing was batched"
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in after["batch_stats"]) == after["inference_count"]


def test_aio_different_inner_shapes_in_flight(client, server):
    """all_types takes [batch, n] for any n: requests with different n in flight together never share a batch, and
    each gets exactly its own values back."""
    arrays = [all_types_arrays(340 + i, 1 + i % 3, 1 + i % 4) for i in range(24)]

    async def body(aio):
        return await gather_outcomes([
            aio.infer("all_types", [make_input(f"in_{s}", a) for s, a in arr.items()],
                      outputs=outputs(["out_int32", "out_bytes", "out_fp16"]), request_id=str(i))
            for i, arr in enumerate(arrays)
        ])

    for i, (arr, res) in enumerate(zip(arrays, run_aio(server, body))):
        assert not isinstance(res, BaseException), res
        assert res.get_response()["id"] == str(i)
        assert np.array_equal(res.as_numpy("out_int32"), arr["int32"]), i
        assert np.array_equal(res.as_numpy("out_fp16").view(np.uint16), arr["fp16"].view(np.uint16)), i
        assert res.as_numpy("out_bytes").tolist() == arr["bytes"].tolist(), i


def test_aio_recommender_priorities_in_flight(client, server):
    ids, feats = recommender_inputs(320, 24)
    ref = client.infer("recommender", [make_input("item_ids", ids), make_input("user_features", feats)]).as_numpy("scores")

    async def body(aio):
        return await gather_outcomes([
            aio.infer("recommender", [make_input("item_ids", ids[i:i + 1]), make_input("user_features", feats[i:i + 1])],
                      priority=1 + i % 2, request_id=str(i))
            for i in range(len(ids))
        ])

    for i, res in enumerate(run_aio(server, body)):
        assert not isinstance(res, BaseException), res
        assert res.get_response()["id"] == str(i)
        np.testing.assert_allclose(res.as_numpy("scores"), ref[i:i + 1], rtol=1e-5, atol=1e-6)


def test_aio_overload_answers_429_and_recovers(client, server):
    """wide queues at most 256 rows: 96 requests of 8 rows sent at once overflow it. Every request is
    answered - with its correct result, 429 (queue full, at once) or 504 (waited past the 1 s queue timeout) - and
    the server serves normally afterwards."""
    x = fp32(330, (8, 512))
    ref = client.infer("wide", [make_input("input", x)]).as_numpy("logits")

    async def body(aio):
        return await gather_outcomes([aio.infer("wide", [make_input("input", x)]) for _ in range(96)])

    results = run_aio(server, body)
    statuses = []
    for res in results:
        if isinstance(res, InferenceServerException):
            statuses.append(res.status())
            assert res.status() in ("429", "504"), (res.status(), res.message())
            assert "wide" in res.message(), res.message()
        else:
            assert not isinstance(res, BaseException), res
            statuses.append("200")
            np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-5, atol=1e-6)
    print("overload statuses:", {s: statuses.count(s) for s in set(statuses)})
    assert "429" in statuses, statuses
    assert "200" in statuses, statuses
    np.testing.assert_allclose(client.infer("wide", [make_input("input", x)]).as_numpy("logits"), ref, rtol=1e-5, atol=1e-6)
    stats = _stats(client, "wide")
    assert stats["sluice"]["queued_requests"] == 0 and stats["sluice"]["queued_rows"] == 0


# ---------------------------------------------------------------- priority


@pytest.mark.parametrize("priority", [0, 1, 2])
def test_recommender_priority_levels(client, priority):
    ids, feats = recommender_inputs(250, 3)
    inputs = [make_input("item_ids", ids), make_input("user_features", feats)]
    ref = client.infer("recommender", inputs).as_numpy("scores")
    res = client.infer("recommender", inputs, priority=priority, request_id=f"p{priority}")
    assert res.get_response()["id"] == f"p{priority}"
    np.testing.assert_allclose(res.as_numpy("scores"), ref, rtol=1e-5, atol=1e-6)


def test_recommender_mixed_priorities_in_flight(client):
    ids, feats = recommender_inputs(251, 12)
    ref = client.infer("recommender", [make_input("item_ids", ids), make_input("user_features", feats)]).as_numpy("scores")
    pending = [
        client.async_infer("recommender", [make_input("item_ids", ids[i:i + 1]), make_input("user_features", feats[i:i + 1])],
                           priority=1 + i % 2, request_id=str(i))
        for i in range(len(ids))
    ]
    for i, p in enumerate(pending):
        res = p.get_result(timeout=30)
        assert res.get_response()["id"] == str(i)
        np.testing.assert_allclose(res.as_numpy("scores"), ref[i:i + 1], rtol=1e-5, atol=1e-6)


def test_priority_one_on_single_level_model(client):
    x = fp32(252, (1, 64))
    ref = client.infer("fraud_mlp", [make_input("input", x)]).as_numpy("logits")
    res = client.infer("fraud_mlp", [make_input("input", x)], priority=1)
    np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-6, atol=0)


def test_bad_priority(client):
    ids, feats = recommender_inputs(253, 1)
    expect_error(lambda: client.infer("recommender", [make_input("item_ids", ids), make_input("user_features", feats)], priority=5),
                 400, "priority", "5")


# ---------------------------------------------------------------- timeout


@pytest.mark.parametrize("timeout_us", [100_000, 2_000_000, 60_000_000])
def test_timeout_parameter_accepted(client, timeout_us):
    """Generous timeouts (in microseconds; one above the model's own queue timeout only leaves it in force) succeed."""
    ids, feats = recommender_inputs(260, 2)
    inputs = [make_input("item_ids", ids), make_input("user_features", feats)]
    ref = client.infer("recommender", inputs).as_numpy("scores")
    res = client.infer("recommender", inputs, timeout=timeout_us, priority=1)
    np.testing.assert_allclose(res.as_numpy("scores"), ref, rtol=1e-6, atol=0)


def test_tiny_timeout_runs_or_times_out(client):
    """A 1 µs queue timeout either still runs (dispatched at once) or is answered 504 without running; either way the
    server goes on serving."""
    x = fp32(261, (1, 64))
    ref = client.infer("fraud_mlp", [make_input("input", x)]).as_numpy("logits")
    for _ in range(3):
        try:
            res = client.infer("fraud_mlp", [make_input("input", x)], timeout=1)
        except InferenceServerException as err:
            assert err.status() == "504", (err.status(), err.message())
            assert "timeout" in err.message()
        else:
            np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(client.infer("fraud_mlp", [make_input("input", x)]).as_numpy("logits"), ref, rtol=1e-6, atol=0)
