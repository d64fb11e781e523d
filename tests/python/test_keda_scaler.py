"""KEDA's external scaler (externalscaler.ExternalScaler) against a real `sluice serve`, through a Python client generated
from proto/externalscaler.proto at test time (grpc_tools.protoc), the way any KEDA-compatible client would see it.

Proves: GetMetricSpec's documented name and target (float and rounded-up int); GetMetrics and IsActive are 0/false on an
idle server and follow a bounded load on model `wide`; StreamIsActive pushes `true` within 1 s of the load starting and
`false` within 3 s of it ending; an unknown model is NOT_FOUND and a bad metric or target INVALID_ARGUMENT on every RPC;
gRPC health answers SERVING on the scaler listener.

The module starts its own server (not the session one), so no other test's load is in its scaling windows.
"""
import http.client
import importlib
import json
import math
import os
import sys
import threading
import time

import grpc
import pytest

from sluice_server import REPO, fixture_server

PROTO_DIR = os.path.join(REPO, "proto")
RPC_TIMEOUT_S = 10.0
LOAD_THREADS = 4
LOAD_SECONDS = 3.0
# Every load thread stops after this many requests even if they are fast, so the loop is bounded in count and time.
LOAD_MAX_REQUESTS = 2000
WIDE_ROWS = 4


@pytest.fixture(scope="session")
def keda_pb(tmp_path_factory):
    """(externalscaler_pb2, externalscaler_pb2_grpc), generated from proto/externalscaler.proto into a temporary dir."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("externalscaler_pb")
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
            os.path.join(PROTO_DIR, "externalscaler.proto")]
    code = protoc.main(args)
    assert code == 0, f"protoc failed ({code}): {' '.join(args)}"
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("externalscaler_pb2")
        pb2_grpc = importlib.import_module("externalscaler_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


@pytest.fixture(scope="module")
def scaler_server(request):
    with fixture_server(request) as srv:
        assert srv.scaler_addr and srv.scaler_addr.startswith("127.0.0.1:"), f"scaler listens on {srv.scaler_addr!r}"
        yield srv


@pytest.fixture(scope="module")
def channel(scaler_server):
    ch = grpc.insecure_channel(scaler_server.scaler_addr)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel, keda_pb):
    return keda_pb[1].ExternalScalerStub(channel)


def ref(keda_pb, **metadata):
    """A ScaledObjectRef as KEDA sends it: the trigger's whole metadata, scalerAddress included."""
    meta = {"scalerAddress": "sluice-scaler.ml.svc:9100", **metadata}
    return keda_pb[0].ScaledObjectRef(name="sluice-wide", namespace="ml", scalerMetadata=meta)


def metrics(stub, keda_pb, metric_name="ignored-name", **metadata):
    """(metricValueFloat, metricValue) of GetMetrics; checks the single value and its rounding."""
    req = keda_pb[0].GetMetricsRequest(scaledObjectRef=ref(keda_pb, **metadata), metricName=metric_name)
    resp = stub.GetMetrics(req, timeout=RPC_TIMEOUT_S)
    assert len(resp.metricValues) == 1, resp
    value = resp.metricValues[0]
    assert value.metricName == metric_name, "the response names the metric KEDA asked for"
    assert value.metricValue == math.ceil(value.metricValueFloat), f"int field is the float rounded up: {value}"
    return value.metricValueFloat, value.metricValue


def test_health_serving(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "externalscaler.ExternalScaler"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, f"health of {service!r}: {resp}"


def test_metric_spec_names_and_targets(stub, keda_pb):
    resp = stub.GetMetricSpec(ref(keda_pb), timeout=RPC_TIMEOUT_S)
    assert len(resp.metricSpecs) == 1, resp
    spec = resp.metricSpecs[0]
    assert (spec.metricName, spec.targetSizeFloat, spec.targetSize) == ("sluice-all-desired-replicas", 1.0, 1)

    resp = stub.GetMetricSpec(ref(keda_pb, model="wide", metric="in_flight", target="2.5"), timeout=RPC_TIMEOUT_S)
    spec = resp.metricSpecs[0]
    assert (spec.metricName, spec.targetSizeFloat, spec.targetSize) == ("sluice-wide-in-flight", 2.5, 3)

    # A target below 1 still gives KEDA versions without the float field a usable (>= 1) integer target.
    spec = stub.GetMetricSpec(ref(keda_pb, model="wide", metric="arrival_rate", target="0.25"), timeout=RPC_TIMEOUT_S).metricSpecs[0]
    assert (spec.metricName, spec.targetSizeFloat, spec.targetSize) == ("sluice-wide-arrival-rate", 0.25, 1)


def expect_code(call, code, *fragments):
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == code, f"got {err.code()}: {err.details()}"
    for fragment in fragments:
        assert fragment in err.details(), f"{fragment!r} not in {err.details()!r}"


def first_message(stub, r):
    stream = stub.StreamIsActive(r, timeout=RPC_TIMEOUT_S)
    try:
        return next(iter(stream))
    finally:
        stream.cancel()


@pytest.mark.parametrize("metadata,code,fragments", [
    ({"model": "no_such_model"}, grpc.StatusCode.NOT_FOUND, ("'no_such_model'", "wide")),
    ({"model": "wide", "target": "abc"}, grpc.StatusCode.INVALID_ARGUMENT, ("target", "'abc'")),
    ({"target": "0"}, grpc.StatusCode.INVALID_ARGUMENT, ("target", "> 0")),
    ({"metric": "gpu_seconds"}, grpc.StatusCode.INVALID_ARGUMENT, ("'gpu_seconds'", "desired_replicas")),
])
def test_errors_on_every_rpc(stub, keda_pb, metadata, code, fragments):
    r = ref(keda_pb, **metadata)
    expect_code(lambda: stub.GetMetricSpec(r, timeout=RPC_TIMEOUT_S), code, *fragments)
    req = keda_pb[0].GetMetricsRequest(scaledObjectRef=r, metricName="x")
    expect_code(lambda: stub.GetMetrics(req, timeout=RPC_TIMEOUT_S), code, *fragments)
    expect_code(lambda: stub.IsActive(r, timeout=RPC_TIMEOUT_S), code, *fragments)
    expect_code(lambda: first_message(stub, r), code, *fragments)


def wide_body():
    inp = {"name": "input", "shape": [WIDE_ROWS, 512], "datatype": "FP32", "data": [0.01 * (i % 97) for i in range(WIDE_ROWS * 512)]}
    return json.dumps({"inputs": [inp]}).encode()


def run_load(http_addr, seconds, stats):
    """LOAD_THREADS threads POST to /v2/models/wide/infer in a loop for `seconds` (bounded by LOAD_MAX_REQUESTS each).
    Returns the threads, started; `stats` collects status codes."""
    host, port = http_addr.rsplit(":", 1)
    body = wide_body()
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT_S)
        try:
            for _ in range(LOAD_MAX_REQUESTS):
                if time.monotonic() >= deadline:
                    break
                conn.request("POST", "/v2/models/wide/infer", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                with lock:
                    stats[resp.status] = stats.get(resp.status, 0) + 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(LOAD_THREADS)]
    for t in threads:
        t.start()
    return threads


def test_metrics_and_stream_follow_load(scaler_server, stub, keda_pb):
    wide = {"model": "wide"}
    # Idle: nothing has run on this server yet.
    assert stub.IsActive(ref(keda_pb, **wide), timeout=RPC_TIMEOUT_S).result is False
    assert stub.IsActive(ref(keda_pb), timeout=RPC_TIMEOUT_S).result is False
    for metric in ("desired_replicas", "queue_requests", "in_flight", "arrival_rate"):
        assert metrics(stub, keda_pb, model="wide", metric=metric) == (0.0, 0), metric
    assert metrics(stub, keda_pb) == (0.0, 0)

    # The stream: every message with the time it arrived.
    events = []
    stream = stub.StreamIsActive(ref(keda_pb, **wide), timeout=60.0)

    def read_stream():
        try:
            for msg in stream:
                events.append((time.monotonic(), msg.result))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                events.append((time.monotonic(), err))

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    deadline = time.monotonic() + 5.0
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert events and events[0][1] is False, f"the stream starts with the current (idle) state: {events}"

    stats = {}
    load_start = time.monotonic()
    threads = run_load(scaler_server.addr, LOAD_SECONDS, stats)
    peak = {}
    try:
        # Sample the metrics while the load runs (bounded: the load ends after LOAD_SECONDS).
        while any(t.is_alive() for t in threads):
            for metric in ("desired_replicas", "queue_requests", "in_flight", "arrival_rate"):
                value, _ = metrics(stub, keda_pb, model="wide", metric=metric)
                peak[metric] = max(peak.get(metric, 0.0), value)
            overall, _ = metrics(stub, keda_pb)
            peak["overall"] = max(peak.get("overall", 0.0), overall)
            peak["active"] = peak.get("active", False) or stub.IsActive(ref(keda_pb, **wide), timeout=RPC_TIMEOUT_S).result
            time.sleep(0.05)
    finally:
        for t in threads:
            t.join(timeout=RPC_TIMEOUT_S + LOAD_SECONDS)
    load_end = time.monotonic()
    assert stats.get(200, 0) > 0 and set(stats) == {200}, f"load answers: {stats}"
    assert peak["desired_replicas"] > 0 and peak["overall"] > 0, peak
    assert peak["in_flight"] > 0 and peak["arrival_rate"] > 0, peak
    assert peak["in_flight"] + peak["queue_requests"] > 0, peak
    assert peak["active"] is True, peak

    # `false` once the fast window (1 s) has passed without arrivals: allow 3 s.
    deadline = load_end + 3.0
    while time.monotonic() < deadline and not (events[-1][1] is False and events[-1][0] > load_end):
        time.sleep(0.02)
    stream.cancel()
    reader.join(timeout=5.0)

    changes = [(t, v) for t, v in events[1:] if isinstance(v, bool)]
    errors = [v for _, v in events if not isinstance(v, bool)]
    assert not errors, errors
    trues = [t for t, v in changes if v is True]
    assert trues, f"no `true` on the stream: {events}"
    assert trues[0] - load_start < 1.0, f"`true` came {trues[0] - load_start:.2f}s after the load started"
    falses = [t for t, v in changes if v is False and t > load_end]
    assert falses, f"no `false` within 3 s after the load ended: {[(round(t - load_start, 2), v) for t, v in events]}"
    assert falses[0] - load_end < 3.0
    # Changes only: no repeated state between the first true and the final false (keep-alives come every 15 s).
    states = [v for _, v in changes]
    assert all(a != b for a, b in zip(states, states[1:])), states

    # After the load, IsActive agrees with the stream; desired_replicas stays > 0 while the slow window remembers it.
    assert stub.IsActive(ref(keda_pb, **wide), timeout=RPC_TIMEOUT_S).result is False
    assert metrics(stub, keda_pb, model="wide", metric="in_flight") == (0.0, 0)
