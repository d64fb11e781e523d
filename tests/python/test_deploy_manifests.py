"""Offline checks of the deployment examples in docker/deploy/ (no cluster, no network, no Sluice process).

- Every YAML file parses (multi-document) and every JSON file parses.
- Deployment, Service, ConfigMap and HorizontalPodAutoscaler validate against the Kubernetes OpenAPI schemas that
  the `kubernetes-validate` package ships (strict: unknown fields fail), for the oldest and newest versions checked.
- KEDA ScaledObjects carry what each trigger type needs, with numeric strings that parse and sensible metricTypes.
- Cross-checks: container ports vs Service targetPorts vs the listen addresses in the ConfigMap's sluice.toml; the
  KEDA addresses vs the Services; sluice.toml keys vs the structs in src/config/ (so a renamed key fails here);
  metric names vs src/metrics/catalogue.rs; the OCI policy vs the namespace and metric names Sluice publishes.

SLUICE_DEPLOY_DIR overrides the directory checked (handy to try a deliberately broken copy).
"""
import copy
import json
import math
import os
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kv_utils  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = Path(os.environ.get("SLUICE_DEPLOY_DIR", ROOT / "docker" / "deploy"))
CONFIG_DIR = ROOT / "src" / "config"
CATALOGUE_RS = ROOT / "src" / "metrics" / "catalogue.rs"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

YAML_FILES = sorted(DEPLOY.glob("*.yaml")) + sorted(DEPLOY.glob("*.yml"))
JSON_FILES = sorted(DEPLOY.glob("*.json"))

# Core kinds validated against the Kubernetes schemas (KEDA CRDs are not in them; they get their own checks).
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"}
# Oldest Kubernetes minor we claim to support (OKE keeps roughly the last three or four minors), plus the newest
# the installed kubernetes-validate knows.
OLDEST_K8S = "1.30"

# What the KEDA scalers need (kedacore/keda-docs: scalers/external.md, external-push.md, metrics-api.md,
# prometheus.md), and which metadata values must be numbers written as strings.
KEDA_REQUIRED = {
    "external": {"scalerAddress"},
    "external-push": {"scalerAddress"},
    "metrics-api": {"url", "valueLocation", "targetValue"},
    "prometheus": {"serverAddress", "query", "threshold"},
}
KEDA_NUMERIC = {"target", "targetValue", "activationTargetValue", "threshold", "activationThreshold"}
KEDA_METRIC_TYPES = {"AverageValue", "Value", "Utilization"}
# Sluice's external scaler metadata (`metric` key).
SLUICE_SCALER_METRICS = {"desired_replicas", "queue_requests", "in_flight", "arrival_rate"}
# Metric names Sluice posts to OCI Monitoring; `model` = "_all" is the overall figure.
OCI_METRIC_NAMES = {"desired_replicas", "queue_requests", "in_flight", "arrival_rate", "busy_ratio"}
OCI_ALL_MODELS = "_all"


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


@pytest.fixture(scope="module")
def docs():
    """Every YAML document under DEPLOY, as (file name, document)."""
    out = []
    for path in YAML_FILES:
        out.extend((path.name, d) for d in load_yaml_docs(path))
    return out


def only(docs, kind, file=None):
    found = [d for name, d in docs if d.get("kind") == kind and (file is None or name == file)]
    assert len(found) == 1, f"expected exactly one {kind}{' in ' + file if file else ''}, found {len(found)}"
    return found[0]


def all_of(docs, kind):
    return [(name, d) for name, d in docs if d.get("kind") == kind]


@pytest.fixture(scope="module")
def deployment(docs):
    return only(docs, "Deployment")


@pytest.fixture(scope="module")
def container(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the checks below assume one container"
    return containers[0]


@pytest.fixture(scope="module")
def container_ports(container):
    """Container port name -> number."""
    return {p["name"]: p["containerPort"] for p in container["ports"]}


@pytest.fixture(scope="module")
def sluice_config_map(docs, deployment):
    volumes = deployment["spec"]["template"]["spec"].get("volumes", [])
    names = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    assert len(names) == 1, f"the Deployment should mount exactly one ConfigMap, mounts {names}"
    found = [d for _, d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == names[0]]
    assert len(found) == 1, f"ConfigMap {names[0]!r} mounted by the Deployment is not defined in {DEPLOY}"
    return found[0]


@pytest.fixture(scope="module")
def sluice_toml(sluice_config_map):
    assert "sluice.toml" in sluice_config_map["data"], "the ConfigMap must carry a `sluice.toml` key"
    return tomllib.loads(sluice_config_map["data"]["sluice.toml"])


@pytest.fixture(scope="module")
def services(docs):
    return {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "Service"}


@pytest.fixture(scope="module")
def scaled_objects(docs):
    return all_of(docs, "ScaledObject")


@pytest.fixture(scope="module")
def oci_policy():
    path = DEPLOY / "oci-autoscaling-policy.json"
    assert path.exists(), f"{path} is missing"
    return json.loads(path.read_text(encoding="utf-8"))


def socket_port(addr):
    """Port of a Rust SocketAddr string: "0.0.0.0:8000" or "[::]:8000"."""
    m = re.fullmatch(r"(?:\[[0-9A-Fa-f:.]+\]|[0-9.]+):(\d{1,5})", addr)
    assert m, f"{addr!r} is not an IP:port socket address (a host name would not parse as a Rust SocketAddr)"
    return int(m.group(1))


def as_float(value, what):
    assert isinstance(value, str), f"{what} must be a quoted string in KEDA metadata, got {value!r}"
    try:
        f = float(value)
    except ValueError:
        pytest.fail(f"{what} = {value!r} does not parse as a number")
    assert math.isfinite(f), f"{what} = {value!r} is not finite"
    return f


# ---------------------------------------------------------------------------------------------------------------
# src/config/: the keys sluice.toml may use


def rust_structs(source):
    """struct name -> {field name: Rust type}, for the `pub struct X { pub field: Type, ... }` items in source."""
    structs = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", source, re.S):
        fields, rename = {}, None
        for line in m.group(2).splitlines():
            attr = re.search(r'#\[serde\(.*\brename\s*=\s*"([^"]+)"', line)
            if attr:
                rename = attr.group(1)  # the TOML key differs from the Rust field name
                continue
            f = re.match(r"\s*pub (\w+):\s*(.+?),\s*(?://.*)?$", line)
            if f:
                fields[rename or f.group(1)] = f.group(2).strip()
                rename = None
        structs[m.group(1)] = fields
    return structs


@pytest.fixture(scope="module")
def config_structs():
    structs = rust_structs("\n".join(p.read_text(encoding="utf-8") for p in sorted(CONFIG_DIR.glob("*.rs"))))
    assert "Config" in structs, "src/config/ has no `pub struct Config`"
    # The sections the manifests use must all be found, or the key check below would be vacuous.
    for section in ("server", "admin", "metrics", "scaling"):
        assert section in structs["Config"], f"Config has no `{section}` field any more"
    return structs


def unwrap_option(rust_type):
    m = re.fullmatch(r"Option<(.+)>", rust_type)
    return m.group(1).strip() if m else rust_type


def check_value(value, rust_type, where):
    """Light type check of a TOML value against the Rust field type it deserializes into."""
    t = unwrap_option(rust_type).split("::")[-1]
    if t == "bool":
        assert isinstance(value, bool), f"{where} must be true/false, got {value!r}"
    elif t in ("f32", "f64"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number"
    elif re.fullmatch(r"[ui](8|16|32|64|128|size)", t):
        assert isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer"
        if t.startswith("u"):
            assert value >= 0, f"{where} must not be negative"
    elif t == "SocketAddr":
        assert isinstance(value, str), f"{where} must be a string"
        socket_port(value)
    elif t == "Duration":
        assert isinstance(value, str) and re.fullmatch(r"\s*(\d+(\.\d+)?\s*[a-zµ]+\s*)+", value), (
            f"{where} must be a humantime duration string such as \"10s\", got {value!r}")
    elif t in ("String", "PathBuf"):
        assert isinstance(value, str), f"{where} must be a string"
    elif t.startswith("BTreeMap<") or t.startswith("HashMap<"):
        assert isinstance(value, dict) and all(isinstance(v, str) for v in value.values()), (
            f"{where} must be a table of strings")
    # Enums (e.g. LogFormat) and anything else: existence of the key is what we check.


def check_toml_against_structs(table, struct_name, structs, where=""):
    """Every key in `table` is a field of `struct_name` (recursing into sub-structs); returns the problems."""
    problems = []
    fields = structs[struct_name]
    for key, value in table.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            problems.append(f"[{where or 'top level'}] has no key `{key}` in src/config/ ({struct_name}); "
                            f"known: {sorted(fields)}")
            continue
        inner = unwrap_option(fields[key])
        if inner in structs:
            if not isinstance(value, dict):
                problems.append(f"`{path}` must be a table ([{path}])")
            else:
                problems.extend(check_toml_against_structs(value, inner, structs, path))
        else:
            try:
                check_value(value, fields[key], f"`{path}`")
            except AssertionError as e:
                problems.append(str(e))
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_yaml_parses(path):
    d = load_yaml_docs(path)
    assert d, f"{path.name} has no documents"
    for doc in d:
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), (
            f"{path.name}: every document needs apiVersion and kind")
        assert doc.get("metadata", {}).get("name"), f"{path.name}: a {doc['kind']} without metadata.name"


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: p.name)
def test_json_parses(path):
    json.loads(path.read_text(encoding="utf-8"))


def test_expected_files_exist():
    for name in ("sluice-deployment.yaml", "keda-scaledobject-external-push.yaml",
                 "keda-scaledobject-metrics-api.yaml", "keda-scaledobject-prometheus.yaml",
                 "hpa-prometheus-adapter.yaml", "oci-autoscaling-policy.json"):
        assert (DEPLOY / name).exists(), f"{DEPLOY / name} is missing"


def test_no_namespace_on_workload_objects(docs):
    """The manifests are applied with `kubectl apply -n <ns>`; a hard-coded namespace would conflict with -n."""
    for name, d in docs:
        assert "namespace" not in d["metadata"], f"{name}: {d['kind']} {d['metadata']['name']} sets a namespace"


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes schema validation


def k8s_versions():
    latest = kv_utils.latest_version()
    versions = kv_utils.all_versions()
    oldest = OLDEST_K8S if any(kv_utils.major_minor(v) <= OLDEST_K8S for v in versions) else versions[0]
    return sorted({kv_utils.major_minor(oldest), kv_utils.major_minor(latest)})


@pytest.mark.parametrize("version", k8s_versions())
def test_core_objects_validate_against_kubernetes_schema(docs, version):
    checked, errors = 0, []
    for name, d in docs:
        if d["kind"] not in CORE_KINDS:
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kv_utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{name}: {d['kind']} {d['metadata']['name']} is invalid for Kubernetes {version}: "
                          f"{path}: {e.message[:400]}")
        checked += 1
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)
    kinds = {d["kind"] for _, d in docs}
    assert CORE_KINDS <= kinds, f"missing kinds: {CORE_KINDS - kinds}"
    assert checked >= 5


def test_schema_validation_is_strict(deployment):
    """Guards the guard: a misspelt field must be rejected, or the test above proves nothing."""
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    with pytest.raises(kv_utils.ValidationError):
        kubernetes_validate.validate(broken, kv_utils.latest_version(), strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Deployment, Services and the ConfigMap agree with each other, the image and src/config/


def test_container_ports(container_ports, container):
    assert container_ports == {"http": 8000, "grpc": 8001, "admin": 8002, "keda-scaler": 9100}, container_ports
    assert all(p.get("protocol", "TCP") == "TCP" for p in container["ports"])


def test_probes_use_v2_health_endpoints(container, container_ports):
    def http_port(probe):
        port = probe["httpGet"]["port"]
        return container_ports[port] if isinstance(port, str) else port

    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert http_port(container[probe]) == container_ports["http"], f"{probe} must hit the V2 HTTP port"


def test_graceful_shutdown(deployment, container):
    pre_stop = container["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        cmd = pre_stop["exec"]["command"]
        assert cmd[0].endswith("sleep"), f"preStop should sleep, runs {cmd}"
        sleep_s = float(cmd[1])
    else:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The grace period covers preStop and then Sluice's drain (gRPC allows up to 30 s).
    assert grace >= sleep_s + 30, f"terminationGracePeriodSeconds {grace} leaves no time to drain after {sleep_s}s"


def test_resources_set(container):
    res = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[kind]), f"resources.{kind} needs cpu and memory"


def test_prometheus_annotations_point_at_admin(deployment, container_ports):
    ann = deployment["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == container_ports["admin"]
    assert ann["prometheus.io/path"] == "/metrics"


def test_services_select_the_pods_and_target_real_ports(deployment, services, container_ports):
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert len(services) >= 2, "expected the data/admin Service and the scaler Service"
    for name, svc in services.items():
        selector = svc["spec"]["selector"]
        assert set(selector.items()) <= set(pod_labels.items()), f"Service {name} selects no Sluice pod"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert target in container_ports, f"Service {name} targets unknown container port {target!r}"
                target = container_ports[target]
            assert target in container_ports.values(), f"Service {name} targets {target}, not a container port"


def service_exposing(services, container_ports, container_port_name):
    """(service, service port) whose targetPort is the named container port."""
    want = container_ports[container_port_name]
    for svc in services.values():
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            target = container_ports.get(target) if isinstance(target, str) else target
            if target == want:
                return svc, port
    pytest.fail(f"no Service exposes container port {container_port_name} ({want})")


def test_main_service_exposes_http_grpc_admin(services, container_ports):
    for port_name in ("http", "grpc", "admin"):
        svc, port = service_exposing(services, container_ports, port_name)
        assert svc["metadata"]["name"] == "sluice", f"{port_name} should be on the `sluice` Service"
        assert port["port"] == container_ports[port_name]


def test_scaler_service(services, container_ports):
    svc, port = service_exposing(services, container_ports, "keda-scaler")
    assert svc["metadata"]["name"] == "sluice-scaler"
    assert port["port"] == 9100
    for p in svc["spec"]["ports"]:
        t = p.get("targetPort", p["port"])
        assert (container_ports.get(t) if isinstance(t, str) else t) == container_ports["keda-scaler"], (
            "the scaler Service should expose only the scaler port")


def test_config_is_mounted_where_the_image_reads_it(deployment, container, sluice_config_map):
    """The image's ENTRYPOINT reads --config PATH; the ConfigMap's sluice.toml must land exactly there."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert m, "docker/Dockerfile has no exec-form ENTRYPOINT"
    argv = json.loads(m.group(1)) + container.get("args", [])
    assert "command" not in container, "overriding the ENTRYPOINT is not covered by this check"
    config_path = argv[len(argv) - 1 - argv[::-1].index("--config") + 1]  # the last --config wins
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                  if v.get("configMap", {}).get("name") == sluice_config_map["metadata"]["name"])
    mount = next(vm for vm in container["volumeMounts"] if vm["name"] == volume["name"])
    items = volume["configMap"].get("items")
    key_path = {i["key"]: i["path"] for i in items}.get("sluice.toml") if items else "sluice.toml"
    mounted = mount["mountPath"] + "/" + mount["subPath"] if "subPath" in mount else f"{mount['mountPath']}/{key_path}"
    assert os.path.normpath(mounted) == os.path.normpath(config_path), (
        f"sluice.toml is mounted at {mounted}, the image reads {config_path}")


def test_pod_runs_as_the_image_user(deployment):
    uid = re.search(r"useradd\b.*--uid\s+(\d+)", DOCKERFILE.read_text(encoding="utf-8"))
    sc = deployment["spec"]["template"]["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True
    if uid and "runAsUser" in sc:
        assert sc["runAsUser"] == int(uid.group(1)), "runAsUser differs from the uid created in docker/Dockerfile"


def test_sluice_toml_uses_only_known_keys(sluice_toml, config_structs):
    problems = check_toml_against_structs(sluice_toml, "Config", config_structs)
    assert not problems, "sluice.toml in the ConfigMap does not match src/config/:\n  " + "\n  ".join(problems)
    for section in ("server", "admin", "metrics", "scaling"):
        assert section in sluice_toml, f"sluice.toml should set [{section}] explicitly"
    assert "keda" in sluice_toml["scaling"], "sluice.toml should set [scaling.keda] explicitly"


def test_key_check_catches_a_renamed_key(sluice_toml, config_structs):
    """Guards the guard: the same check must reject a key src/config/ doesn't have."""
    broken = copy.deepcopy(sluice_toml)
    broken["scaling"]["keda"]["listen_addr"] = broken["scaling"]["keda"].pop("listen")
    assert check_toml_against_structs(broken, "Config", config_structs)
    broken = copy.deepcopy(sluice_toml)
    broken["admin"]["enabled"] = "yes"
    assert check_toml_against_structs(broken, "Config", config_structs)


def test_sluice_toml_listen_addresses_match_container_ports(sluice_toml, container_ports):
    assert socket_port(sluice_toml["server"]["http"]) == container_ports["http"]
    assert socket_port(sluice_toml["server"]["grpc"]) == container_ports["grpc"]
    assert sluice_toml["admin"].get("enabled", True) is True
    assert socket_port(sluice_toml["admin"]["listen"]) == container_ports["admin"]
    assert sluice_toml["scaling"]["keda"].get("enabled", True) is True
    assert socket_port(sluice_toml["scaling"]["keda"]["listen"]) == container_ports["keda-scaler"]
    assert sluice_toml.get("metrics", {}).get("enabled", True) is True, "Prometheus-based scaling needs [metrics]"
    tu = sluice_toml["scaling"].get("target_utilization", 0.7)
    assert 0 < tu <= 1


# ---------------------------------------------------------------------------------------------------------------
# KEDA ScaledObjects


def test_scaled_objects_are_well_formed(scaled_objects, deployment):
    assert {name for name, _ in scaled_objects} >= {
        "keda-scaledobject-external-push.yaml", "keda-scaledobject-metrics-api.yaml",
        "keda-scaledobject-prometheus.yaml"}
    for name, so in scaled_objects:
        assert so["apiVersion"] == "keda.sh/v1alpha1", name
        spec = so["spec"]
        target = spec["scaleTargetRef"]
        assert target["name"] == deployment["metadata"]["name"], f"{name}: scaleTargetRef is not the Deployment"
        assert target.get("kind", "Deployment") == "Deployment", name
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        assert isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi, f"{name}: replica bounds {lo}..{hi}"
        # Sluice serves its own signal: scaling it to zero would leave nobody to answer the scaler.
        assert lo >= 1, f"{name}: minReplicaCount must be >= 1 while Sluice scales itself"
        assert spec["triggers"], f"{name}: no triggers"
        for trig in spec["triggers"]:
            kind = trig["type"]
            assert kind in KEDA_REQUIRED, f"{name}: unexpected trigger type {kind}"
            meta = trig["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), f"{name}: KEDA metadata values must be strings"
            missing = KEDA_REQUIRED[kind] - set(meta)
            assert not missing, f"{name}: {kind} trigger lacks {missing}"
            for key in KEDA_NUMERIC & set(meta):
                as_float(meta[key], f"{name}: {key}")
            if "metricType" in trig:
                assert trig["metricType"] in KEDA_METRIC_TYPES, f"{name}: metricType {trig['metricType']}"
        if "fallback" in spec:
            # KEDA ignores fallback for Value triggers.
            assert all(t.get("metricType", "AverageValue") == "AverageValue" for t in spec["triggers"]), name
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior:
            # The HPA behaviour KEDA passes through must itself be valid autoscaling/v2.
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
                   "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": hi,
                            "behavior": behavior}}
            kubernetes_validate.validate(hpa, kv_utils.latest_version(), strict=True)


def triggers_of(scaled_objects, kinds):
    return [(name, t) for name, so in scaled_objects for t in so["spec"]["triggers"] if t["type"] in kinds]


def test_external_scaler_address_points_at_the_scaler_service(scaled_objects, services, container_ports):
    triggers = triggers_of(scaled_objects, {"external", "external-push"})
    assert triggers, "no external / external-push trigger"
    svc = services["sluice-scaler"]
    for name, trig in triggers:
        meta = trig["metadata"]
        host, _, port = meta["scalerAddress"].rpartition(":")
        labels = host.split(".")
        assert labels[0] == svc["metadata"]["name"], f"{name}: scalerAddress host {host} is not the scaler Service"
        # KEDA's operator runs in its own namespace: the address must name the Service's namespace.
        assert len(labels) >= 3 and labels[2] == "svc", f"{name}: use <service>.<namespace>.svc[.cluster.local]"
        assert int(port) == 9100 == container_ports["keda-scaler"], f"{name}: scaler port {port}"
        svc_port = next(p for p in svc["spec"]["ports"] if p["port"] == int(port))
        if svc["spec"].get("clusterIP") == "None":
            # A headless Service does no port translation: the dialled port is the pod port.
            target = svc_port.get("targetPort", svc_port["port"])
            assert (container_ports.get(target) if isinstance(target, str) else target) == int(port)
        # desired_replicas is each replica's share: Value semantics, target 1 (see the file's comments).
        assert trig.get("metricType") == "Value", f"{name}: external triggers on desired_replicas must use Value"
        assert meta.get("metric", "desired_replicas") in SLUICE_SCALER_METRICS, f"{name}: metric {meta.get('metric')}"
        if meta.get("metric", "desired_replicas") == "desired_replicas":
            assert as_float(meta.get("target", "1"), "target") == 1.0


def test_metrics_api_sums_every_pod(scaled_objects, services, container_ports):
    triggers = triggers_of(scaled_objects, {"metrics-api"})
    assert triggers, "no metrics-api trigger"
    for name, trig in triggers:
        meta = trig["metadata"]
        url = urlsplit(meta["url"])
        labels = url.hostname.split(".")
        assert labels[0] == "sluice" and labels[0] in services, f"{name}: url host {url.hostname} is not the Service"
        assert len(labels) >= 3 and labels[2] == "svc", f"{name}: KEDA reads <service>.<namespace> from the host"
        # With aggregateFromKubeServiceEndpoints KEDA matches the URL port against the pod (EndpointSlice) port.
        assert url.port == container_ports["admin"], f"{name}: url port must be the admin container port"
        assert url.path == "/scaling", f"{name}: url path {url.path}"
        assert meta.get("format", "json") == "json"
        assert re.fullmatch(r"desired_replicas|models\.[A-Za-z0-9_\-\\.]+\.desired_replicas", meta["valueLocation"])
        assert meta["aggregateFromKubeServiceEndpoints"] == "true", f"{name}: must read every pod"
        assert meta["aggregationType"] == "sum", f"{name}: shares add up; average would under-size the fleet"
        assert trig.get("metricType", "AverageValue") == "AverageValue", f"{name}: sum needs AverageValue"
        assert as_float(meta["targetValue"], "targetValue") == 1.0


def test_scaling_json_shape_matches_value_location(scaled_objects):
    """valueLocation must find a number in the documented /scaling body (a GJSON dot path, no escapes used)."""
    body = {"timestamp": "2025-01-01T00:00:00Z", "target_utilization": 0.7, "desired_replicas": 1.3, "active": True,
            "models": {"wide": {"desired_replicas": 0.8, "active": True, "queue_requests": 3, "queue_rows": 12,
                                "in_flight": 5, "arrival_rate": 120.0, "arrival_rows_rate": 480.0,
                                "service_rows_rate": 900.0, "busy_ratio": 0.6, "instances": 1}}}
    for name, trig in triggers_of(scaled_objects, {"metrics-api"}):
        node = body
        for part in trig["metadata"]["valueLocation"].split("."):
            assert isinstance(node, dict) and part in node, f"{name}: valueLocation part {part!r} not found"
            node = node[part]
        assert isinstance(node, (int, float)) and not isinstance(node, bool)


def test_prometheus_trigger(scaled_objects):
    triggers = triggers_of(scaled_objects, {"prometheus"})
    assert triggers, "no prometheus trigger"
    for name, trig in triggers:
        meta = trig["metadata"]
        assert urlsplit(meta["serverAddress"]).scheme in ("http", "https"), f"{name}: serverAddress needs a scheme"
        query = meta["query"]
        assert re.search(r"\bsum\s*\(\s*sluice_desired_replicas(_overall)?\s*[{)]", query), (
            f"{name}: the query should sum sluice_desired_replicas over pods: {query}")
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query
        assert trig.get("metricType", "AverageValue") == "AverageValue", f"{name}: a sum needs AverageValue"
        assert as_float(meta["threshold"], "threshold") == 1.0


# ---------------------------------------------------------------------------------------------------------------
# HPA + prometheus-adapter


@pytest.fixture(scope="module")
def adapter_config(docs):
    cm = [d for name, d in docs if name == "hpa-prometheus-adapter.yaml" and d["kind"] == "ConfigMap"]
    assert len(cm) == 1, "hpa-prometheus-adapter.yaml should hold one ConfigMap with the adapter rules"
    return yaml.safe_load(cm[0]["data"]["config.yaml"])


def test_prometheus_adapter_rules(adapter_config):
    assert adapter_config.get("externalRules") or adapter_config.get("rules"), "no rules / externalRules"
    for section in ("rules", "externalRules"):
        for rule in adapter_config.get(section, []):
            assert "sluice_desired_replicas" in rule["seriesQuery"], rule
            assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"], rule
            re.compile(rule["name"]["matches"])
            overrides = rule["resources"]["overrides"]
            assert overrides["namespace"] == {"resource": "namespace"}, rule
            if section == "rules":
                assert overrides.get("pod") == {"resource": "pod"}, "a Pods metric rule must map the pod label"


def test_hpa_uses_the_adapter_metric(docs, deployment, adapter_config):
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
    served = {("External", r["name"]["as"]) for r in adapter_config.get("externalRules", [])}
    served |= {("Pods", r["name"]["as"]) for r in adapter_config.get("rules", [])}
    assert hpa["spec"]["metrics"]
    for m in hpa["spec"]["metrics"]:
        kind = m["type"]
        assert kind in ("External", "Pods"), f"unexpected HPA metric type {kind}"
        src = m[kind.lower()]
        assert (kind, src["metric"]["name"]) in served, f"HPA asks for {kind} {src['metric']['name']}, not served"
        # Summed per-pod shares: AverageValue 1 gives ceil(sum) for External, ceil(mean x pods) for Pods.
        assert src["target"]["type"] == "AverageValue", "desired_replicas needs an AverageValue target"
        assert float(src["target"]["averageValue"]) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Metric names used anywhere must exist in the catalogue


def test_prometheus_metric_names_exist():
    catalogue = set(re.findall(r'pub const \w+: &str = "(sluice_\w+)";', CATALOGUE_RS.read_text(encoding="utf-8")))
    assert "sluice_desired_replicas" in catalogue, "src/metrics/catalogue.rs lost sluice_desired_replicas"
    used = set()
    for path in YAML_FILES:
        used |= set(re.findall(r"\bsluice_[a-z0-9_]+", path.read_text(encoding="utf-8")))
    assert used, "no sluice_* metric referenced"
    unknown = used - catalogue
    assert not unknown, f"metric names not in src/metrics/catalogue.rs: {sorted(unknown)}"


# ---------------------------------------------------------------------------------------------------------------
# OCI autoscaling configuration (CreateAutoScalingConfigurationDetails)

OCID = re.compile(r"ocid1\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9-]*\.[A-Za-z0-9_.-]+")
ISO_MINUTES = re.compile(r"PT(?:(\d+)H)?(?:(\d+)M)?")
MQL_RULE = re.compile(
    r"^(?P<metric>[A-Za-z][A-Za-z0-9_.$-]*)\[(?P<interval>\d+[mh])\]"
    r"(?:\{(?P<dims>[^}]*)\})?"
    r"(?P<fns>(?:\.[a-zA-Z]+\([^)]*\))+)"
    r"\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>-?\d+(?:\.\d+)?)$")


def parse_mql(query):
    m = MQL_RULE.match(query.strip())
    assert m, f"not a `metric[interval]{{dims}}.fn() <op> value` MQL trigger rule: {query}"
    dims = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', m.group("dims") or ""))
    return m.group("metric"), m.group("interval"), dims, m.group("fns"), m.group("op"), float(m.group("value"))


def test_oci_policy_required_fields(oci_policy):
    for key in ("compartmentId", "policies", "resource"):
        assert key in oci_policy, f"CreateAutoScalingConfigurationDetails needs `{key}`"
    assert OCID.fullmatch(oci_policy["compartmentId"])
    assert oci_policy["resource"]["type"] == "instancePool"
    assert OCID.fullmatch(oci_policy["resource"]["id"])
    assert oci_policy.get("coolDownInSeconds", 300) >= 300, "OCI's minimum cooldown is 300 s"
    threshold = [p for p in oci_policy["policies"] if p["policyType"] == "threshold"]
    assert len(threshold) == 1 == len(oci_policy["policies"]), "one threshold policy per configuration"
    cap = threshold[0]["capacity"]
    assert all(isinstance(cap[k], int) for k in ("min", "max", "initial"))
    assert 0 <= cap["min"] <= cap["initial"] <= cap["max"]
    rules = threshold[0]["rules"]
    assert rules
    for rule in rules:
        assert rule["action"]["type"] == "CHANGE_COUNT_BY"
        assert isinstance(rule["action"]["value"], int) and rule["action"]["value"] != 0
        metric = rule["metric"]
        assert metric["metricSource"] == "CUSTOM_QUERY"
        for key in ("metricCompartmentId", "namespace", "query"):
            assert metric.get(key), f"a CUSTOM_QUERY metric needs `{key}`"
        assert OCID.fullmatch(metric["metricCompartmentId"])
        if "pendingDuration" in metric:
            h, mnt = ISO_MINUTES.fullmatch(metric["pendingDuration"]).groups()
            minutes = int(h or 0) * 60 + int(mnt or 0)
            assert 3 <= minutes <= 60, "pendingDuration must be between PT3M and PT1H"


def test_oci_policy_queries_what_sluice_publishes(oci_policy, sluice_toml):
    namespace = sluice_toml.get("scaling", {}).get("oci", {}).get("namespace", "sluice")
    rules = oci_policy["policies"][0]["rules"]
    outs, ins = [], []
    for rule in rules:
        metric = rule["metric"]
        assert metric["namespace"] == namespace, f"namespace {metric['namespace']!r}; Sluice posts to {namespace!r}"
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", namespace) and not namespace.lower().startswith(
            ("oci_", "oracle_")), "not a valid custom metric namespace"
        name, interval, dims, fns, op, value = parse_mql(metric["query"])
        assert name in OCI_METRIC_NAMES, f"Sluice publishes {sorted(OCI_METRIC_NAMES)}, not {name}"
        assert set(dims) <= {"model", "instance"} | set(sluice_toml.get("scaling", {}).get("oci", {}).get(
            "dimensions", {})), f"unknown dimension in {dims}"
        assert 1 <= int(interval[:-1]) * (60 if interval.endswith("h") else 1) <= 60
        if name == "desired_replicas":
            # Averaging per-instance shares across the pool: mean > 1 <=> sum > pool size <=> short of capacity.
            assert dims.get("model") == OCI_ALL_MODELS or "model" in dims
            assert ".grouping()" in fns and fns.endswith(".mean()"), "compare the pool-wide mean share"
        (outs if rule["action"]["value"] > 0 else ins).append((op, value))
    assert len(outs) == 1 and len(ins) == 1, "one scale-out and one scale-in rule"
    (out_op, out_v), (in_op, in_v) = outs[0], ins[0]
    assert out_op in (">", ">=") and in_op in ("<", "<="), "scale out on high demand, in on low"
    assert in_v < out_v, "the scale-in threshold must sit below the scale-out one (hysteresis)"
