"""The OCI Monitoring publisher ([scaling.oci]) of a real `sluice serve`, posting to a local stand-in receiver
(oci_receiver.py) over plain HTTP on 127.0.0.1.

Proves:
- each post is signed exactly as the official `oci` Python SDK signs the same request (same signature= value for the
  same method, URL, date and body), the signature verifies with the public key, and x-content-sha256,
  content-length, host and the PostMetricData body schema are right (≤ 50 streams per call, RFC 3339 timestamps);
- the OCI config file is read the SDK's way: a named profile inheriting [DEFAULT], a relative key_file, and a key
  file with the console's `OCI_API_KEY` trailer line;
- posted values follow load: queue/arrival values of model `identity` become > 0 after inference requests;
- 500 then 429 are retried with backoff and the datapoints of the failed posts arrive later, while inference keeps
  being answered; a 400 drops the batch and is counted as rejected;
- a receiver that never answers, or a closed port, does not slow inference (every request answered 200 within
  2 s) and shows up as growing `sluice_oci_posts_total{outcome="retried"}` on the admin /metrics;
- bad set-ups (missing key file, missing profile key, missing compartment_id, bad endpoint) make `sluice serve` exit
  non-zero with a message naming the problem.

One server runs the receiver tests in order (each restores the receiver's default answer); the closed-port and bad
config cases start their own. Every wait is bounded.
"""
import base64
import datetime
import hashlib
import json
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from oci_receiver import HANG, Receiver
from sluice_server import SluiceServer, StartError, fixture_server

TENANCY = "ocid1.tenancy.oc1..aaaaaaaapytesttenancy"
USER = "ocid1.user.oc1..aaaaaaaapytestuser"
COMPARTMENT = "ocid1.compartment.oc1..aaaaaaaapytestcompartment"
NAMESPACE = "sluice_pytest"
PROFILE = "SLUICE"
SIGNED_HEADERS = "date (request-target) host content-length content-type x-content-sha256"
METRICS = {"desired_replicas", "queue_requests", "in_flight", "arrival_rate", "busy_ratio"}
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._$-]*$")
INFER_BOUND_S = 2.0
HTTP_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------------------------------------- set-up


@pytest.fixture(scope="module")
def oci_files(tmp_path_factory):
    """An API key (PKCS#8, with the console's OCI_API_KEY trailer line), a clean copy for the SDK, its fingerprint, and
    an OCI config file whose [SLUICE] profile inherits everything but the region from [DEFAULT]."""
    d = tmp_path_factory.mktemp("oci")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (d / "keys").mkdir()
    (d / "keys" / "api_key.pem").write_bytes(pem + b"OCI_API_KEY\n")
    (d / "sdk_key.pem").write_bytes(pem)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.md5(der).hexdigest()
    fingerprint = ":".join(digest[i:i + 2] for i in range(0, 32, 2))
    config = d / "config"
    config.write_text(
        "[DEFAULT]\n"
        f"user={USER}\n"
        f"fingerprint={fingerprint}\n"
        "key_file=keys/api_key.pem\n"
        f"tenancy={TENANCY}\n"
        "region=us-ashburn-1\n"
        "\n"
        f"[{PROFILE}]\n"
        "region=eu-frankfurt-1\n"
    )
    return {"dir": d, "config": config, "key": key, "sdk_key": d / "sdk_key.pem", "fingerprint": fingerprint}


def sluice_config(path, oci_config, endpoint, compartment=COMPARTMENT, profile=PROFILE, extra=""):
    lines = [
        "[scaling.oci]",
        "enabled = true",
        f"config_file = {json.dumps(str(oci_config))}",
        f"profile = {json.dumps(profile)}",
        f"namespace = {json.dumps(NAMESPACE)}",
        f"endpoint = {json.dumps(endpoint)}",
        'interval = "1s"',
        'timeout = "1s"',
        "dimensions = { pool = \"pytest\" }",
    ]
    if compartment is not None:
        lines.append(f"compartment_id = {json.dumps(compartment)}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def server(oci_files, receiver, tmp_path_factory, request):
    config = sluice_config(tmp_path_factory.mktemp("sluice") / "sluice.toml", oci_files["config"], receiver.url)
    with fixture_server(request, extra_args=["--config", str(config)]) as srv:
        yield srv


@pytest.fixture
def clean_receiver(receiver):
    """The receiver answering 200 again after the test, whatever the test set."""
    yield receiver
    receiver.set_default(200)


# ---------------------------------------------------------------------------------------------------------- helpers


def infer(addr, rows=1, timeout=HTTP_TIMEOUT_S):
    """One JSON inference on `identity`; returns (status, seconds)."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [rows, 256], "datatype": "FP32",
                                   "data": [0.5] * (rows * 256)}]}).encode()
    req = urllib.request.Request(f"http://{addr}/v2/models/identity/infer", data=body,
                                 headers={"content-type": "application/json"}, method="POST")
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.monotonic() - t0


def assert_inference_unaffected(addr, count=50):
    slow = []
    for _ in range(count):
        status, elapsed = infer(addr)
        assert status == 200
        if elapsed > INFER_BOUND_S:
            slow.append(elapsed)
    assert not slow, f"inference slowed by the publisher: {slow}"


def scrape(admin_addr):
    with urllib.request.urlopen(f"http://{admin_addr}/metrics", timeout=HTTP_TIMEOUT_S) as resp:
        return resp.read().decode()


def series(text, name, labels=""):
    """The value of one series in Prometheus text, 0 when absent."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):].split()[0])
    return 0.0


def posts(admin_addr, outcome):
    return series(scrape(admin_addr), "sluice_oci_posts_total", f'outcome="{outcome}"')


def wait_until(fn, timeout_s, poll_s=0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(poll_s)


def parse_authorization(value):
    assert value.startswith("Signature "), value
    return dict(re.findall(r'(\w+)="([^"]*)"', value[len("Signature "):]))


def parse_ts(ts):
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts), ts
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def datapoints(requests_, model, metric):
    """[(timestamp, value)] of one stream over the given requests."""
    out = []
    for r in requests_:
        for md in r.json()["metricData"]:
            if md["name"] == metric and md["dimensions"].get("model") == model:
                out.extend((d["timestamp"], d["value"]) for d in md["datapoints"])
    return out


def check_body(body, now):
    data = body["metricData"]
    assert 1 <= len(data) <= 50, len(data)
    streams = set()
    for md in data:
        assert md["namespace"] == NAMESPACE
        assert md["compartmentId"] == COMPARTMENT
        assert NAME_RE.match(md["name"]) and md["name"] in METRICS, md["name"]
        dims = md["dimensions"]
        assert dims and all(k and v for k, v in dims.items()), dims
        assert dims["pool"] == "pytest" and dims["instance"] and dims["model"], dims
        assert md["metadata"]["unit"]
        assert md["datapoints"], md
        for d in md["datapoints"]:
            t = parse_ts(d["timestamp"])
            assert now - 600 < t < now + 60, d
            assert isinstance(d["value"], (int, float)) and math.isfinite(d["value"]), d
        key = (md["name"], tuple(sorted(dims.items())))
        assert key not in streams, f"stream {key} appears twice in one call"
        streams.add(key)
    names = {(md["name"], md["dimensions"]["model"]) for md in data}
    return names


# ---------------------------------------------------------------------------------------------------------- tests


def test_posts_are_signed_like_the_oci_sdk(server, receiver, oci_files):
    import oci
    from oci._vendor import requests as oci_requests

    got = receiver.wait_for(lambda rs: [r for r in rs if r.answered == 200], timeout_s=10)
    assert got, "no post within 10 s of start-up"
    req = got[0]
    h = req.headers
    assert req.path == "/20180401/metrics"
    assert h["host"] == f"127.0.0.1:{receiver.port}"
    assert h["content-type"] == "application/json"
    assert h["accept"] == "application/json"
    assert h.get("opc-request-id")
    assert int(h["content-length"]) == len(req.body)
    assert h["x-content-sha256"] == base64.b64encode(hashlib.sha256(req.body).digest()).decode()
    sent = datetime.datetime.strptime(h["date"], "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=datetime.timezone.utc)
    assert abs(sent.timestamp() - time.time()) < 120, h["date"]

    auth = parse_authorization(h["authorization"])
    assert auth["version"] == "1"
    assert auth["algorithm"] == "rsa-sha256"
    assert auth["headers"] == SIGNED_HEADERS
    assert auth["keyId"] == f"{TENANCY}/{USER}/{oci_files['fingerprint']}"

    # The official SDK signs the same request (same URL, date and body): the signatures must be identical.
    signer = oci.signer.Signer(TENANCY, USER, oci_files["fingerprint"], private_key_file_location=str(oci_files["sdk_key"]))
    prepared = oci_requests.Request(
        "POST", f"http://{h['host']}{req.path}", headers={"date": h["date"], "content-type": "application/json"}, data=req.body,
    ).prepare()
    signer(prepared)
    sdk = parse_authorization(prepared.headers["authorization"])
    assert prepared.headers["x-content-sha256"] == h["x-content-sha256"]
    assert sdk["keyId"] == auth["keyId"] and sdk["headers"] == auth["headers"]
    assert auth["signature"] == sdk["signature"]

    # And it verifies with the public key over the signing string rebuilt from what arrived.
    lines = []
    for name in auth["headers"].split():
        lines.append(f"(request-target): post {req.path}" if name == "(request-target)" else f"{name}: {h[name]}")
    oci_files["key"].public_key().verify(
        base64.b64decode(auth["signature"]), "\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256(),
    )

    names = check_body(req.json(), time.time())
    assert ("desired_replicas", "_all") in names
    for metric in METRICS:
        assert (metric, "identity") in names, (metric, sorted(names))


def test_values_follow_load(server, receiver):
    start = time.time()
    deadline = time.monotonic() + 3.0
    sent = 0
    while time.monotonic() < deadline and sent < 2000:
        status, _ = infer(server.addr, rows=4)
        assert status == 200
        sent += 1
    assert sent > 10

    def loaded(rs):
        later = [r for r in rs if r.answered == 200 and r.received_at > start]
        arrivals = [v for _, v in datapoints(later, "identity", "arrival_rate")]
        return arrivals if any(v > 0 for v in arrivals) else None

    arrivals = receiver.wait_for(loaded, timeout_s=5)
    assert arrivals, "no post carried arrival_rate > 0 for identity after the load"
    later = [r for r in receiver.snapshot() if r.received_at > start]
    assert any(v > 0 for _, v in datapoints(later, "identity", "desired_replicas"))
    assert any(v > 0 for _, v in datapoints(later, "_all", "desired_replicas"))
    for r in later:
        check_body(r.json(), time.time())


def test_server_errors_are_retried_and_the_data_arrives(server, clean_receiver):
    receiver = clean_receiver
    retried_before = posts(server.admin_addr, "retried")
    first = len(receiver.snapshot())
    receiver.answer(500, 429)
    # Inference keeps working meanwhile.
    assert_inference_unaffected(server.addr, count=20)

    def delivered_after_failures(rs):
        rs = rs[first:]
        statuses = [r.answered for r in rs]
        if 500 in statuses and 429 in statuses:
            after = [r for r in rs[statuses.index(429) + 1:] if r.answered == 200]
            return after or None
        return None

    after = receiver.wait_for(delivered_after_failures, timeout_s=15)
    assert after, f"no 200 after the 500 and 429: {[r.answered for r in receiver.snapshot()[first:]]}"
    failed = [r for r in receiver.snapshot()[first:] if r.answered in (500, 429)]
    lost = set(datapoints(failed, "_all", "desired_replicas")) - set(datapoints(after, "_all", "desired_replicas"))
    assert not lost, f"datapoints of the failed posts never arrived: {lost}"
    assert posts(server.admin_addr, "retried") >= retried_before + 2


def test_bad_request_drops_the_batch(server, clean_receiver):
    receiver = clean_receiver
    text = scrape(server.admin_addr)
    rejected_before = series(text, "sluice_oci_posts_total", 'outcome="rejected"')
    dropped_before = series(text, "sluice_oci_datapoints_dropped_total", 'reason="rejected"')
    first = len(receiver.snapshot())
    receiver.answer(400)
    got = receiver.wait_for(lambda rs: [r for r in rs[first:] if r.answered == 400], timeout_s=5)
    assert got
    refused = got[0]
    # The next posts carry newer points only: the refused batch is not sent again.
    later = receiver.wait_for(lambda rs: [r for r in rs[first:] if r.answered == 200 and r.received_at > refused.received_at], timeout_s=5)
    assert later
    assert not set(datapoints([refused], "_all", "desired_replicas")) & set(datapoints(later, "_all", "desired_replicas"))
    text = scrape(server.admin_addr)
    assert series(text, "sluice_oci_posts_total", 'outcome="rejected"') == rejected_before + 1
    points = sum(len(md["datapoints"]) for md in refused.json()["metricData"])
    assert series(text, "sluice_oci_datapoints_dropped_total", 'reason="rejected"') == dropped_before + points


def test_hanging_receiver_does_not_slow_inference(server, clean_receiver):
    receiver = clean_receiver
    retried_before = posts(server.admin_addr, "retried")
    receiver.set_default(HANG)
    assert receiver.wait_for(lambda rs: [r for r in rs if r.answered == HANG], timeout_s=5)
    assert_inference_unaffected(server.addr)
    grew = wait_until(lambda: posts(server.admin_addr, "retried") >= retried_before + 2, timeout_s=15)
    assert grew, f"retried stayed at {posts(server.admin_addr, 'retried')} (before: {retried_before})"
    text = scrape(server.admin_addr)
    assert series(text, "sluice_oci_buffered_datapoints") > 0


def test_closed_port_does_not_slow_inference(oci_files, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` now: every connection is refused.
    config = sluice_config(tmp_path / "sluice.toml", oci_files["config"], f"http://127.0.0.1:{port}")
    with SluiceServer(extra_args=["--config", str(config)]) as srv:
        assert_inference_unaffected(srv.addr)
        grew = wait_until(lambda: posts(srv.admin_addr, "retried") >= 2, timeout_s=15)
        assert grew, f"retried: {posts(srv.admin_addr, 'retried')}"
        assert posts(srv.admin_addr, "ok") == 0


def write_oci_config(path, key_file, fingerprint, drop=()):
    values = {"user": USER, "fingerprint": fingerprint, "key_file": str(key_file), "tenancy": TENANCY, "region": "us-ashburn-1"}
    path.write_text("[DEFAULT]\n" + "".join(f"{k}={v}\n" for k, v in values.items() if k not in drop))
    return path


@pytest.mark.parametrize("case", ["missing_key_file", "missing_fingerprint", "missing_profile", "missing_compartment", "bad_endpoint"])
def test_bad_setup_fails_at_start(case, oci_files, tmp_path):
    key_file = oci_files["dir"] / "keys" / "api_key.pem"
    fingerprint = oci_files["fingerprint"]
    endpoint = "http://127.0.0.1:9"
    profile = "DEFAULT"
    compartment = COMPARTMENT
    if case == "missing_key_file":
        key_file = tmp_path / "no_such_key.pem"
        expect = ["API signing key file", str(key_file)]
    elif case == "missing_fingerprint":
        expect = ["lacks fingerprint", "[DEFAULT]"]
    elif case == "missing_profile":
        profile = "NOPE"
        expect = ["profile [NOPE] not found"]
    elif case == "missing_compartment":
        compartment = None
        expect = ["scaling.oci.compartment_id"]
    else:
        endpoint = "ftp://127.0.0.1:9"
        expect = ["endpoint 'ftp://127.0.0.1:9'", "https://"]
    oci_config = write_oci_config(tmp_path / "config", key_file, fingerprint,
                                  drop=("fingerprint",) if case == "missing_fingerprint" else ())
    config = sluice_config(tmp_path / "sluice.toml", oci_config, endpoint, compartment=compartment, profile=profile)
    srv = SluiceServer(extra_args=["--config", str(config)])
    with pytest.raises(StartError):
        srv.start()
    try:
        assert srv.proc.returncode not in (0, None), srv.proc.returncode
        log = srv.log_tail()
        assert "sluice: error:" in log, log
        for text in expect:
            assert text in log, f"{text!r} not in:\n{log}"
    finally:
        srv.remove_log()
