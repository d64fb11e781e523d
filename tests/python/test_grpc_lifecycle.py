"""Graceful stop on SIGTERM as gRPC clients see it, on a server of its own: accepted requests are still answered, health
turns NOT_SERVING, and the process exits 0 promptly - also while clients hold long-lived streams open (a
ModelStreamInfer stream, a Health.Watch), which must not keep it alive."""
import queue
import signal
import subprocess
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from helpers import fp32, grpc_input
from sluice_server import STOP_GRACE_S, SluiceServer

# An idle server stops in well under a second; this leaves room for a slow machine.
EXIT_WITHIN_S = 3.0


@pytest.fixture
def own_server():
    with SluiceServer() as srv:
        yield srv


def exits_within(srv, seconds):
    try:
        return srv.proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def test_sigterm_answers_accepted_grpc_requests(own_server):
    """Four 64-row wide requests in flight over gRPC (256 rows: as many as its queue holds); SIGTERM once the first is
    answered. Every other one gets its correct result or a clean UNAVAILABLE - none is dropped - and the process exits
    0, refusing connections after."""
    x = fp32(900, (64, 512))
    c = grpcclient.InferenceServerClient(own_server.grpc_addr)
    try:
        ref = c.infer("wide", [grpc_input("input", x)]).as_numpy("logits")
        answers = queue.Queue()
        for i in range(4):
            c.async_infer("wide", [grpc_input("input", x)], request_id=str(i),
                          callback=lambda result, error: answers.put((result, error)))
        results = [answers.get(timeout=30)]
        own_server.proc.send_signal(signal.SIGTERM)
        results += [answers.get(timeout=30) for _ in range(3)]
        served = 0
        for result, error in results:
            if error is not None:
                assert error.status() == "StatusCode.UNAVAILABLE", (error.status(), error.message())
            else:
                np.testing.assert_allclose(result.as_numpy("logits"), ref, rtol=1e-5, atol=1e-6)
                served += 1
        assert served >= 1
        assert exits_within(own_server, STOP_GRACE_S) == 0
        with pytest.raises(InferenceServerException) as info:
            c.is_server_live()
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        c.close()


def test_sigterm_with_an_open_inference_stream_exits(own_server):
    """A tritonclient stream that has been answered and stays open (as a client keeps it for its lifetime) must not
    keep the server from stopping: after SIGTERM the process exits 0 within seconds, ending the stream."""
    c = grpcclient.InferenceServerClient(own_server.grpc_addr)
    answers = queue.Queue()
    try:
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        c.async_stream_infer("fraud_mlp", [grpc_input("input", fp32(901, (1, 64)))], request_id="s0")
        result, error = answers.get(timeout=30)
        assert error is None and result.get_response().id == "s0"
        own_server.proc.send_signal(signal.SIGTERM)
        code = exits_within(own_server, EXIT_WITHIN_S)
        assert code == 0, f"still running {EXIT_WITHIN_S}s after SIGTERM while a ModelStreamInfer stream is open"
    finally:
        c.stop_stream(cancel_requests=True)
        c.close()


def test_sigterm_turns_health_not_serving_and_ends_watch(own_server):
    """A Health.Watch stream sees SERVING, then NOT_SERVING on SIGTERM; the open Watch must not keep the server from
    stopping: the process exits 0 within seconds."""
    channel = grpc.insecure_channel(own_server.grpc_addr)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    statuses = queue.Queue()

    def read():
        try:
            for msg in watch:
                statuses.put(msg.status)
        except grpc.RpcError as err:
            statuses.put(err.code())

    try:
        threading.Thread(target=read, daemon=True).start()
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.SERVING
        own_server.proc.send_signal(signal.SIGTERM)
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.NOT_SERVING
        code = exits_within(own_server, EXIT_WITHIN_S)
        assert code == 0, f"still running {EXIT_WITHIN_S}s after SIGTERM while a Health.Watch stream is open"
    finally:
        watch.cancel()
        channel.close()
