"""Triton's own clients through a Sluice gateway: a second `sluice serve` with no local models forwards to the session's
server (the worker) over V2 HTTP in one pool and over V2 gRPC in another, and tritonclient HTTP and gRPC talk to the
gateway exactly as they would to the worker. Every datatype of all_types comes back bit-exact (the gateway re-encodes
what the worker answered), answers equal the worker's own, request ids come back, and errors keep their status."""
import http.client
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helpers import all_types_arrays, expect_error, grpc_input, make_input, outputs, recommender_inputs
from sluice_server import fixture_server
from test_datatypes import SUFFIXES, all_inputs, assert_same

MODELS = ["all_types", "recommender", "fraud_mlp"]


def gateway_config(protocol, endpoint):
    models = ", ".join(f'"{m}"' for m in MODELS)
    return f"""
[[upstreams]]
name = "worker-{protocol}"
protocol = "{protocol}"
endpoints = ["{endpoint}"]
models = [{models}]
try_timeout = "10s"
startup_timeout = "20s"
"""


@pytest.fixture(scope="module", params=["http", "grpc"])
def gateway(request, sluice):
    """A gateway forwarding to the session's server over HTTP or gRPC."""
    endpoint = sluice.addr if request.param == "http" else sluice.grpc_addr
    with tempfile.TemporaryDirectory(prefix="sluice-gateway-") as tmp:
        config = os.path.join(tmp, "gateway.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(gateway_config(request.param, endpoint))
        empty = os.path.join(tmp, "no-models")
        os.mkdir(empty)
        with fixture_server(request, models=empty, extra_args=("--config", config)) as srv:
            yield srv


def test_every_datatype_through_the_gateway_http(gateway, client):
    c = httpclient.InferenceServerClient(gateway.addr)
    arrays = all_types_arrays(300, 3, 4)
    for binary in (True, False):
        res = c.infer("all_types", all_inputs(arrays, binary), outputs=outputs([f"out_{s}" for s in SUFFIXES], binary),
                      request_id="via-gateway")
        assert res.get_response()["id"] == "via-gateway"
        for suffix in SUFFIXES:
            assert_same(suffix, res.as_numpy(f"out_{suffix}"), arrays[suffix])
    c.close()


def test_every_datatype_through_the_gateway_grpc(gateway):
    c = grpcclient.InferenceServerClient(gateway.grpc_addr)
    arrays = all_types_arrays(301, 2, 3)
    inputs = [grpc_input(f"in_{s}", a) for s, a in arrays.items()]
    res = c.infer("all_types", inputs, request_id="grpc-via-gateway")
    assert res.get_response().id == "grpc-via-gateway"
    for suffix in SUFFIXES:
        assert_same(suffix, res.as_numpy(f"out_{suffix}"), arrays[suffix])
    c.close()


def test_answers_equal_the_workers_own(gateway, client):
    c = httpclient.InferenceServerClient(gateway.addr)
    ids, feats = recommender_inputs(302, 4)
    inputs = lambda: [make_input("item_ids", ids), make_input("user_features", feats)]  # noqa: E731
    direct = client.infer("recommender", inputs())
    via = c.infer("recommender", inputs())
    for o in direct.get_response()["outputs"]:
        np.testing.assert_array_equal(via.as_numpy(o["name"]), direct.as_numpy(o["name"]))
    c.close()


def test_metadata_and_readiness_through_the_gateway(gateway, client):
    c = httpclient.InferenceServerClient(gateway.addr)
    assert c.is_server_ready()
    for model in MODELS:
        assert c.is_model_ready(model)
        mine, theirs = c.get_model_metadata(model), client.get_model_metadata(model)
        assert mine["inputs"] == theirs["inputs"], model
        assert mine["outputs"] == theirs["outputs"], model
    # Only the listed models are served.
    assert not c.is_model_ready("identity")
    c.close()


def test_bad_input_is_refused_by_the_gateway_itself(gateway):
    c = httpclient.InferenceServerClient(gateway.addr)
    wrong = np.zeros((1, 3), dtype=np.float32)
    expect_error(lambda: c.infer("fraud_mlp", [make_input("input", wrong)]), 400)
    c.close()


def test_promtool_accepts_the_gateways_exposition(gateway, client):
    """The per-endpoint families (written by Sluice itself, not the metrics registry) pass `promtool check metrics`
    and count the attempts this test made."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is not installed"
    c = httpclient.InferenceServerClient(gateway.addr)
    data = np.zeros((1, 64), dtype=np.float32)
    c.infer("fraud_mlp", [make_input("input", data)])
    c.close()
    conn = http.client.HTTPConnection(gateway.admin_addr, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200
    text = body.decode()
    for family in ("sluice_upstream_requests_total", "sluice_upstream_request_duration_seconds_bucket",
                   "sluice_upstream_outstanding_requests", "sluice_upstream_available", "sluice_upstream_ejections_total"):
        assert text.count(f"# TYPE {family.removesuffix('_bucket')} ") == 1, family
    ok = [line for line in text.splitlines() if line.startswith("sluice_upstream_requests_total{") and 'outcome="ok"' in line]
    assert ok and sum(float(line.rsplit(" ", 1)[1]) for line in ok) >= 1, ok
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
