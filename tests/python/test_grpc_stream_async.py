"""Several gRPC requests in flight: ModelStreamInfer through tritonclient's start_stream/async_stream_infer (and the raw
stub), async_infer with callbacks, tritonclient.grpc.aio, priority levels, deadlines (grpc-timeout) and queue
backpressure (RESOURCE_EXHAUSTED). Every request is answered - with its own rows, or with its own error - and the
server keeps serving afterwards."""
import asyncio
import contextlib
import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from helpers import (
    all_types_arrays,
    expect_grpc_deadline,
    expect_grpc_error,
    fp32,
    grpc_input,
    grpc_raw_outputs,
    infer_request,
    is_deadline_status,
    make_input,
    recommender_inputs,
)

WAIT_S = 30


@contextlib.contextmanager
def stream(grpc_addr):
    """A fresh tritonclient gRPC client with a started stream (tritonclient allows one stream per client); yields
    (client, answers), answers a queue of (result, error) in callback order. Closed (and drained) on exit."""
    c = grpcclient.InferenceServerClient(grpc_addr)
    answers = queue.Queue()
    c.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=WAIT_S)
    try:
        yield c, answers
    finally:
        c.stop_stream(cancel_requests=True)
        c.close()


def take(answers, n):
    return [answers.get(timeout=WAIT_S) for _ in range(n)]


def assert_same_outputs(result, want):
    """`result` (an InferResult) has the outputs of `want` (another): byte for byte for the Identity models, within
    float rounding for the others (requests in flight together may be batched, and a GEMM over more rows may round
    differently)."""
    got = result.get_response()
    exp = want.get_response()
    assert [o.name for o in got.outputs] == [o.name for o in exp.outputs]
    if got.model_name in ("identity", "all_types"):
        assert grpc_raw_outputs(result) == grpc_raw_outputs(want), got.id
    else:
        for o in got.outputs:
            np.testing.assert_allclose(result.as_numpy(o.name), want.as_numpy(o.name), rtol=1e-5, atol=1e-6, err_msg=got.id)


def _stats(grpc_client, model):
    (s,) = grpc_client.get_inference_statistics(model, "1").model_stats
    return s


# ---------------------------------------------------------------- streaming


def test_stream_answers_every_id(grpc_client, grpc_addr):
    """12 requests for four models on one stream: each id is answered exactly once, with the unary call's outputs."""
    ids, feats = recommender_inputs(700, 2)
    types = {f"in_{s}": a for s, a in all_types_arrays(701, 2, 3).items()}
    jobs = {}
    for i in range(12):
        kind = i % 4
        if kind == 0:
            jobs[f"s{i}"] = ("fraud_mlp", {"input": fp32(710 + i, (1 + i % 3, 64))})
        elif kind == 1:
            jobs[f"s{i}"] = ("identity", {"input": fp32(710 + i, (2, 256))})
        elif kind == 2:
            jobs[f"s{i}"] = ("recommender", {"item_ids": ids, "user_features": feats})
        else:
            jobs[f"s{i}"] = ("all_types", types)
    want = {rid: grpc_client.infer(m, [grpc_input(n, a) for n, a in arrs.items()]) for rid, (m, arrs) in jobs.items()}
    with stream(grpc_addr) as (c, answers):
        for rid, (m, arrs) in jobs.items():
            c.async_stream_infer(m, [grpc_input(n, a) for n, a in arrs.items()], request_id=rid)
        got = take(answers, len(jobs))
    seen = []
    for result, error in got:
        assert error is None, error
        resp = result.get_response()
        seen.append(resp.id)
        assert resp.model_name == jobs[resp.id][0]
        assert_same_outputs(result, want[resp.id])
    assert sorted(seen) == sorted(jobs)


def test_stream_bad_requests_fail_alone(grpc_addr):
    """A wrong shape and an unknown model in the middle of a stream: those two are answered with an error, every other
    request with its result, and the stream goes on serving requests sent after them."""
    xs = [fp32(720 + i, (1, 64)) for i in range(8)]
    with stream(grpc_addr) as (c, answers):
        for i, x in enumerate(xs[:6]):
            if i == 2:
                c.async_stream_infer("fraud_mlp", [grpc_input("input", fp32(729, (1, 63)))], request_id="bad-shape")
            elif i == 4:
                c.async_stream_infer("no_such_model", [grpc_input("input", x)], request_id="bad-model")
            else:
                c.async_stream_infer("fraud_mlp", [grpc_input("input", x)], request_id=f"ok{i}")
        first = take(answers, 6)
        for i in (6, 7):
            c.async_stream_infer("fraud_mlp", [grpc_input("input", xs[i])], request_id=f"ok{i}")
        later = take(answers, 2)
    errors = sorted(e.message() for r, e in first if e is not None)
    assert len(errors) == 2, errors
    assert "63" in errors[0] and "input" in errors[0], errors
    assert "no_such_model" in errors[1], errors
    ok = sorted(r.get_response().id for r, e in first if e is None)
    assert ok == ["ok0", "ok1", "ok3", "ok5"]
    assert sorted(r.get_response().id for r, e in later if e is None) == ["ok6", "ok7"]


def test_stream_error_responses_carry_the_request_id(grpc_stub):
    """With the raw stub: a failed request of the stream is a ModelStreamInferResponse with error_message and the
    failed request's id (tritonclient drops the id, so this is how a streaming client tells which one failed)."""
    x = fp32(730, (1, 64))
    requests = [
        infer_request("fraud_mlp", {"input": x}, request_id="a"),
        infer_request("no_such_model", {"input": x}, request_id="b"),
        infer_request("fraud_mlp", {"input": fp32(731, (2, 63))}, request_id="c"),
        infer_request("fraud_mlp", {"input": x}, request_id="d", typed=True),
    ]
    answers = {r.infer_response.id: r for r in grpc_stub.ModelStreamInfer(iter(requests), timeout=WAIT_S)}
    assert sorted(answers) == ["a", "b", "c", "d"]
    assert answers["a"].error_message == "" and answers["d"].error_message == ""
    assert grpc_raw_outputs(answers["a"].infer_response) == grpc_raw_outputs(answers["d"].infer_response)
    assert answers["a"].infer_response.model_name == "fraud_mlp"
    assert "no_such_model" in answers["b"].error_message
    assert "63" in answers["c"].error_message
    assert not answers["b"].infer_response.raw_output_contents


def test_stream_close_waits_for_requests_in_flight(grpc_addr):
    """stop_stream() right after sending (no cancel) half-closes the stream; the server still answers every request
    it received before the stream ends."""
    x = fp32(740, (8, 512))
    c = grpcclient.InferenceServerClient(grpc_addr)
    answers = queue.Queue()
    try:
        c.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=WAIT_S)
        for i in range(10):
            c.async_stream_infer("wide", [grpc_input("input", x)], request_id=str(i))
        c.stop_stream(cancel_requests=False)
        got = [answers.get_nowait() for _ in range(answers.qsize())]
    finally:
        c.close()
    assert sorted(r.get_response().id for r, e in got if e is None) == [str(i) for i in range(10)], got


def test_stream_priority_and_versions(grpc_client, grpc_addr):
    ids, feats = recommender_inputs(750, 1)
    rec = [grpc_input("item_ids", ids), grpc_input("user_features", feats)]
    ref = grpc_client.infer("recommender", rec)
    x = fp32(751, (1, 64))
    refs = {v: grpc_client.infer("fraud_mlp", [grpc_input("input", x)], model_version=v) for v in "12"}
    with stream(grpc_addr) as (c, answers):
        for p in (1, 2, 0):
            c.async_stream_infer("recommender", rec, priority=p, request_id=f"p{p}")
        for v in "12":
            c.async_stream_infer("fraud_mlp", [grpc_input("input", x)], model_version=v, request_id=f"v{v}")
        got = take(answers, 5)
    for result, error in got:
        assert error is None, error
        resp = result.get_response()
        if resp.id.startswith("p"):
            assert_same_outputs(result, ref)
        else:
            assert resp.model_version == resp.id[1:]
            assert_same_outputs(result, refs[resp.id[1:]])


# ---------------------------------------------------------------- async_infer and tritonclient.grpc.aio


def test_async_infer_rows_split_back_exactly(grpc_client):
    """24 async_infer calls of 1..4 rows in flight on identity: each callback gets exactly its own rows."""
    before = _stats(grpc_client, "identity")
    arrays = [fp32(760 + i, (1 + i % 4, 256)) for i in range(24)]
    answers = queue.Queue()
    for i, a in enumerate(arrays):
        grpc_client.async_infer("identity", [grpc_input("input", a)], request_id=f"r{i}",
                                callback=lambda result, error: answers.put((result, error)))
    for result, error in take(answers, len(arrays)):
        assert error is None, error
        i = int(result.get_response().id[1:])
        assert np.array_equal(result.as_numpy("output"), arrays[i]), i
    after = _stats(grpc_client, "identity")
    assert after.inference_count - before.inference_count == sum(len(a) for a in arrays)
    assert 1 <= after.execution_count - before.execution_count <= len(arrays)


def test_async_infer_error_goes_to_its_callback(grpc_client):
    answers = {}
    done = queue.Queue()

    def cb(name):
        return lambda result, error: (answers.__setitem__(name, (result, error)), done.put(name))

    grpc_client.async_infer("identity", [grpc_input("input", fp32(770, (1, 256)))], callback=cb("ok"))
    grpc_client.async_infer("identity", [grpc_input("input", fp32(771, (1, 128)))], callback=cb("shape"))
    grpc_client.async_infer("no_such_model", [grpc_input("input", fp32(772, (1, 256)))], callback=cb("model"))
    take(done, 3)
    assert answers["ok"][1] is None and answers["ok"][0].as_numpy("output").shape == (1, 256)
    assert answers["shape"][1].status() == "StatusCode.INVALID_ARGUMENT" and "input" in answers["shape"][1].message()
    assert answers["model"][1].status() == "StatusCode.NOT_FOUND" and "no_such_model" in answers["model"][1].message()


def run(coro):
    return asyncio.run(coro)


def test_aio_wide_batches_concurrent_requests(grpc_client, grpc_addr):
    """16 single-row requests at once through tritonclient.grpc.aio share executions, and each row equals the same row
    of one 16-row request."""
    x = fp32(780, (16, 512))
    batched = grpc_client.infer("wide", [grpc_input("input", x)]).as_numpy("logits")
    before = _stats(grpc_client, "wide")

    async def main():
        async with grpcaio.InferenceServerClient(grpc_addr) as aio:
            return await asyncio.gather(*[aio.infer("wide", [grpc_input("input", x[i:i + 1])], request_id=str(i))
                                          for i in range(len(x))], return_exceptions=True)

    for i, res in enumerate(run(main())):
        assert not isinstance(res, BaseException), res
        assert res.get_response().id == str(i)
        np.testing.assert_allclose(res.as_numpy("logits"), batched[i:i + 1], rtol=1e-5, atol=1e-6)
    after = _stats(grpc_client, "wide")
    assert after.inference_count - before.inference_count == 16
    assert after.execution_count - before.execution_count < 16, "nothing was batched"


def test_http_and_grpc_requests_in_flight_together(grpc_addr, server):
    """HTTP and gRPC requests for identity sent at the same time (they may share batches): each gets its own rows."""
    arrays = [fp32(790 + i, (1 + i % 3, 256)) for i in range(16)]

    async def main():
        async with grpcaio.InferenceServerClient(grpc_addr) as g:
            h = httpaio.InferenceServerClient(server)
            try:
                calls = [g.infer("identity", [grpc_input("input", a)]) if i % 2 else h.infer("identity", [make_input("input", a)])
                         for i, a in enumerate(arrays)]
                return await asyncio.gather(*calls, return_exceptions=True)
            finally:
                await h.close()

    for a, res in zip(arrays, run(main())):
        assert not isinstance(res, BaseException), res
        assert np.array_equal(res.as_numpy("output"), a)


# ---------------------------------------------------------------- priority


@pytest.mark.parametrize("priority", [0, 1, 2])
def test_recommender_priority_levels(grpc_client, priority):
    ids, feats = recommender_inputs(800, 3)
    inputs = [grpc_input("item_ids", ids), grpc_input("user_features", feats)]
    ref = grpc_raw_outputs(grpc_client.infer("recommender", inputs))
    res = grpc_client.infer("recommender", inputs, priority=priority, request_id=f"p{priority}")
    assert res.get_response().id == f"p{priority}"
    assert grpc_raw_outputs(res) == ref


def test_recommender_mixed_priorities_in_flight(grpc_client):
    ids, feats = recommender_inputs(801, 12)
    ref = grpc_client.infer("recommender", [grpc_input("item_ids", ids), grpc_input("user_features", feats)]).as_numpy("scores")
    answers = queue.Queue()
    for i in range(len(ids)):
        grpc_client.async_infer("recommender", [grpc_input("item_ids", ids[i:i + 1]), grpc_input("user_features", feats[i:i + 1])],
                                priority=1 + i % 2, request_id=str(i), callback=lambda result, error: answers.put((result, error)))
    for result, error in take(answers, len(ids)):
        assert error is None, error
        i = int(result.get_response().id)
        np.testing.assert_allclose(result.as_numpy("scores"), ref[i:i + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,priority", [("recommender", 3), ("fraud_mlp", 2)])
def test_priority_out_of_range(grpc_client, model, priority):
    if model == "recommender":
        ids, feats = recommender_inputs(802, 1)
        inputs = [grpc_input("item_ids", ids), grpc_input("user_features", feats)]
    else:
        inputs = [grpc_input("input", fp32(802, (1, 64)))]
    expect_grpc_error(lambda: grpc_client.infer(model, inputs, priority=priority), "INVALID_ARGUMENT", "priority",
                      str(priority))


def test_timeout_parameter_accepted(grpc_client):
    """The V2 `timeout` parameter (microseconds), generous, still runs the request."""
    ids, feats = recommender_inputs(803, 2)
    inputs = [grpc_input("item_ids", ids), grpc_input("user_features", feats)]
    ref = grpc_raw_outputs(grpc_client.infer("recommender", inputs))
    assert grpc_raw_outputs(grpc_client.infer("recommender", inputs, timeout=2_000_000, priority=1)) == ref


# ---------------------------------------------------------------- deadlines and backpressure


def busy_wide(grpc_client, n, rows=64, seed=810):
    """Sends n async requests of `rows` rows to wide; returns a queue that receives (result, error) for each."""
    answers = queue.Queue()
    x = grpc_input("input", fp32(seed, (rows, 512)))
    for _ in range(n):
        grpc_client.async_infer("wide", [x], callback=lambda result, error: answers.put((result, error)))
    return answers


def test_tiny_deadline_on_busy_model_is_deadline_exceeded(grpc_client):
    """client_timeout 1 ms while wide works through three 64-row batches (192 rows queued at most, so the queue has room
    for it): DEADLINE_EXCEEDED (from the server, which drops it from its queue without running it, or from the client
    library). The busy requests are unaffected."""
    x = fp32(811, (1, 512))
    ref = grpc_raw_outputs(grpc_client.infer("wide", [grpc_input("input", x)]))
    busy = busy_wide(grpc_client, 3)
    time.sleep(0.005)
    for _ in range(3):
        expect_grpc_deadline(lambda: grpc_client.infer("wide", [grpc_input("input", x)], client_timeout=0.001))
    for result, error in take(busy, 3):
        assert error is None, error
    assert grpc_raw_outputs(grpc_client.infer("wide", [grpc_input("input", x)], client_timeout=WAIT_S)) == ref
    assert grpc_client.is_server_live()


def test_deadline_passed_while_running_message(grpc_client):
    """A 64-row wide request on an idle wide (dispatched at once: 64 is its preferred batch size) with a deadline shorter
    than its compute time: DEADLINE_EXCEEDED. The server answers 1 ms before the deadline, so its own message normally
    comes back; it must give the deadline as a duration (not a Rust `Option` debug string like "Some(5ms)")."""
    x = grpc_input("input", fp32(812, (64, 512)))
    one = grpc_input("input", fp32(813, (1, 512)))
    server_messages = []
    for timeout in (0.005, 0.008, 0.005, 0.008, 0.012):
        grpc_client.infer("wide", [one])  # waits until wide's instance is idle (a timed-out batch still finishes)
        try:
            grpc_client.infer("wide", [x], client_timeout=timeout)
            continue  # a machine fast enough to finish in time
        except InferenceServerException as err:
            status, message = err.status(), err.message() or ""
        assert is_deadline_status(status, message), (status, message)
        if status == "StatusCode.DEADLINE_EXCEEDED" and "wide" in message:  # the server's (the library's says "Deadline Exceeded")
            server_messages.append(message)
    if not server_messages:
        pytest.skip("no server-side deadline message came back (the request finished in time, or the client's fired first)")
    print("deadline messages:", server_messages)
    for message in server_messages:
        assert "Some(" not in message, f"unformatted deadline in {message!r}"
    grpc_client.infer("wide", [one])


def test_queue_full_is_resource_exhausted_and_recovers(grpc_client, client):
    """wide queues at most 256 rows: 160 async 8-row requests sent at once overflow it. Each is answered - with its
    correct result, RESOURCE_EXHAUSTED naming the model, or DEADLINE_EXCEEDED past the 1 s queue timeout - and the
    server serves normally afterwards, with nothing left queued."""
    x = fp32(813, (8, 512))
    ref = grpc_client.infer("wide", [grpc_input("input", x)]).as_numpy("logits")
    answers = busy_wide(grpc_client, 160, rows=8, seed=813)
    codes = []
    for result, error in take(answers, 160):
        if error is None:
            codes.append("OK")
            np.testing.assert_allclose(result.as_numpy("logits"), ref, rtol=1e-5, atol=1e-6)
        else:
            codes.append(error.status())
            assert error.status() in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.DEADLINE_EXCEEDED"), (error.status(), error.message())
            assert "wide" in error.message(), error.message()
    print("overload codes:", {c: codes.count(c) for c in set(codes)})
    assert "StatusCode.RESOURCE_EXHAUSTED" in codes and "OK" in codes, codes
    np.testing.assert_allclose(grpc_client.infer("wide", [grpc_input("input", x)]).as_numpy("logits"), ref, rtol=1e-5, atol=1e-6)
    (stats,) = client.get_inference_statistics("wide", "1")["model_stats"]
    assert stats["sluice"]["queued_requests"] == 0 and stats["sluice"]["queued_rows"] == 0
    assert stats["sluice"]["rejected"] >= codes.count("StatusCode.RESOURCE_EXHAUSTED")

