"""A real Prometheus (Debian's `prometheus`, which scripts/setup.sh --test installs) scrapes a real `sluice serve` on
127.0.0.1, and the metrics are read back through Prometheus' own HTTP query API, the way dashboards and the Prometheus
adapter read them. `promtool check metrics` (from the same package) lints the exposition.

The module runs its own server on a temporary repository with two models: `identity`, and `held`, an identity whose
batcher waits up to 8 s for a full 64-row batch - so requests sent to it stay queued, for a known time, in a known
number, and the queue-depth gauges can be checked for exact values rather than for "above zero".
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from sluice_server import MODELS, fixture_server

SCRAPE_INTERVAL_S = 1
WAIT_S = 20.0  # longest wait for Prometheus to show a value (a scrape a second, so normally about 2 s)
HELD_DELAY_S = 8
HELD_MODEL_TOML = f"""max_batch_size = 64
instances = 1
[dynamic_batching]
max_queue_delay = "{HELD_DELAY_S}s"
wait_when_alone = true
preferred_batch_sizes = [64]
[queue]
timeout = "60s"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def identity_body(rows):
    return json.dumps({"inputs": [{"name": "input", "shape": [rows, 256], "datatype": "FP32",
                                   "data": [0.25] * (rows * 256)}]}).encode()


def post_infer(addr, model, rows):
    """One V2 HTTP inference; returns the status code."""
    conn = http.client.HTTPConnection(addr, timeout=60)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=identity_body(rows),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def get(addr, path, timeout=10):
    conn = http.client.HTTPConnection(addr, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("prometheus_models")
    shutil.copytree(os.path.join(MODELS, "identity"), root / "identity")
    (root / "held" / "1").mkdir(parents=True)
    shutil.copy(os.path.join(MODELS, "identity", "1", "model.onnx"), root / "held" / "1" / "model.onnx")
    (root / "held" / "model.toml").write_text(HELD_MODEL_TOML)
    return root


@pytest.fixture(scope="module")
def sluice_srv(repo, request):
    with fixture_server(request, models=str(repo)) as srv:
        yield srv


@pytest.fixture(scope="module")
def prometheus(sluice_srv, tmp_path_factory):
    """A Prometheus scraping the server's admin port every second; yields its "127.0.0.1:PORT"."""
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is not installed: run `bash scripts/setup.sh --test` (as root) or apt-get install prometheus"
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  scrape_timeout: {SCRAPE_INTERVAL_S}s\n"
        f"scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{sluice_srv.admin_addr}']\n"
    )
    log = open(work / "prometheus.log", "wb")
    proc = addr = None
    for _ in range(3):  # the free port may be taken between probing and binding: try another
        addr = f"127.0.0.1:{free_port()}"
        proc = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address={addr}", "--web.enable-lifecycle"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if get(addr, "/-/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if proc.poll() is None:
            break
    log.close()
    ok = False
    try:
        assert proc.poll() is None, f"prometheus did not start: {(work / 'prometheus.log').read_text()[-3000:]}"
        yield addr
        ok = True
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not ok:
            print(f"\n==== prometheus log ====\n{(work / 'prometheus.log').read_text()[-5000:]}")


def query(prometheus, promql):
    """Runs an instant PromQL query through Prometheus' HTTP API; returns [(labels, float value)]."""
    status, body = get(prometheus, "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    assert answer["data"]["resultType"] == "vector", answer
    return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]


def wait_for_value(prometheus, promql, want):
    """Polls the query until it returns exactly one sample equal to `want`; returns the last result on timeout."""
    deadline = time.monotonic() + WAIT_S
    result = None
    while time.monotonic() < deadline:
        result = query(prometheus, promql)
        if len(result) == 1 and result[0][1] == want:
            return result
        time.sleep(0.2)
    pytest.fail(f"Prometheus query {promql!r} never returned {want} within {WAIT_S}s; last result: {result}")


def test_prometheus_scrapes_sluice(prometheus, sluice_srv):
    result = wait_for_value(prometheus, 'up{job="sluice"}', 1.0)
    assert result[0][0]["instance"] == sluice_srv.admin_addr


def test_request_metrics_through_promql(prometheus, sluice_srv):
    """25 successful and 3 rejected (bad shape) requests on identity show in PromQL with their exact counts and labels,
    and the latency histogram gives a quantile."""
    for _ in range(25):
        assert post_infer(sluice_srv.addr, "identity", 2) == 200
    for _ in range(3):
        conn = http.client.HTTPConnection(sluice_srv.addr, timeout=10)
        conn.request("POST", "/v2/models/identity/infer", body=b'{"inputs": [{"name": "input", "shape": [2, 3], '
                                                                 b'"datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}')
        assert conn.getresponse().status == 400
        conn.close()
    result = wait_for_value(prometheus, 'sum by (model, version, protocol) '
                                        '(sluice_requests_total{model="identity", code="200", protocol="http"})', 25.0)
    assert result[0][0] == {"model": "identity", "version": "1", "protocol": "http"}
    wait_for_value(prometheus, 'sum(sluice_requests_total{model="identity", code="400"})', 3.0)
    # Each version's 200 series exist from load at zero (here gRPC's, which had no traffic).
    wait_for_value(prometheus, 'sluice_requests_total{model="identity", code="200", protocol="grpc"}', 0.0)
    wait_for_value(prometheus, 'sum(sluice_request_duration_seconds_count{model="identity"})', 28.0)
    p99 = query(prometheus, 'histogram_quantile(0.99, sum by (le) (sluice_request_duration_seconds_bucket{model="identity"}))')
    assert len(p99) == 1 and 0 < p99[0][1] < 10, p99
    rows = query(prometheus, 'sum(sluice_batch_size_sum{model="identity"})')
    assert rows and rows[0][1] == 50.0, rows  # 25 requests of 2 rows were computed; the 3 bad ones never queued


def test_queue_depth_through_promql(prometheus, sluice_srv):
    """Three 1-row requests wait in `held`'s queue (its batcher holds them for a fuller batch): Prometheus sees queue
    depth 3 requests / 3 rows and the model active; a 61-row request completes the 64-row batch, everything is answered
    and the queue reads 0 again."""
    wait_for_value(prometheus, 'sluice_queue_requests{model="held"}', 0.0)
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(post_infer(sluice_srv.addr, "held", 1))) for _ in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    wait_for_value(prometheus, 'sluice_queue_requests{model="held"}', 3.0)
    wait_for_value(prometheus, 'sluice_queue_rows{model="held"}', 3.0)
    wait_for_value(prometheus, 'sluice_model_active{model="held"}', 1.0)
    desired = query(prometheus, 'sluice_desired_replicas{model="held"}')
    assert desired and desired[0][1] > 0, desired
    # All of that was seen while the requests were still held, not after the batcher gave up waiting.
    assert time.monotonic() - started < HELD_DELAY_S, "Prometheus took longer than the hold to show the queue"
    assert post_infer(sluice_srv.addr, "held", 61) == 200
    for t in threads:
        t.join(timeout=60)
    assert statuses == [200, 200, 200]
    wait_for_value(prometheus, 'sluice_queue_requests{model="held"}', 0.0)
    wait_for_value(prometheus, 'sum(sluice_batch_size_count{model="held"})', 1.0)  # one batch of 64 rows
    wait_for_value(prometheus, 'sum(sluice_batch_size_sum{model="held"})', 64.0)


def test_promtool_accepts_the_exposition(prometheus, sluice_srv):
    """`promtool check metrics` (format and naming lint) passes on what /metrics serves after traffic, so every
    histogram, counter and gauge family is present."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is not installed"
    assert post_infer(sluice_srv.addr, "identity", 1) == 200
    status, body = get(sluice_srv.admin_addr, "/metrics")
    assert status == 200
    for family in ("sluice_request_duration_seconds_bucket", "sluice_queue_requests", "process_resident_memory_bytes"):
        assert family.encode() in body, family
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
