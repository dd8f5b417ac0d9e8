"""The non-SAM deployment artefacts under deploy/: Kubernetes manifests, Prometheus scrape config, Grafana dashboard.

Kubernetes documents are validated offline, in strict mode (unknown fields are errors), against the OpenAPI
JSON schemas bundled in the ``kubernetes-validate`` package; no schema is fetched at test time.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "readmit.json"
SCRAPE = DEPLOY / "prometheus" / "scrape.yaml"

# The Kubernetes minor version the manifests target (EKS); schemas for it ship inside kubernetes-validate.
K8S_VERSION = "1.30"

# What Prometheus can see: only what runs on the cluster. The API runs on Lambda, so its metrics are read from
# CloudWatch; Prometheus scrapes Qdrant, whose /metrics series are listed in
# https://qdrant.tech/documentation/guides/monitoring/ ("Node metrics").
QDRANT_METRICS = {
    "app_info",
    "app_status_recovery_mode",
    "collections_total",
    "collections_vector_total",
    "rest_responses_total",
    "rest_responses_fail_total",
    "rest_responses_avg_duration_seconds",
    "rest_responses_min_duration_seconds",
    "rest_responses_max_duration_seconds",
    "grpc_responses_total",
    "grpc_responses_fail_total",
    "cluster_enabled",
    "cluster_peers_total",
    "cluster_term",
    "cluster_commit",
    "cluster_pending_operations_total",
    "cluster_voter",
}
# API Gateway's own metrics for the readmit-<stage> API (as template.yaml's Dashboard and alarm use them).
APIGATEWAY_METRICS = {"4XXError", "5XXError"}
# CloudWatch namespace "Readmit": metric name -> the service dimension it is published with.
CLOUDWATCH_METRICS = {
    "Predictions": "readmit",
    "HighRiskPredictions": "readmit",
    "LatencyMs": "readmit",
    "MaxFeaturePSI": "readmit",
    "RiskPSI": "readmit",
    "HighRiskRate": "readmit",
    "DriftDetected": "readmit",
    "MonitoredPredictions": "readmit",
    "ModelsPromoted": "readmit-retrain",
    "ModelsRejected": "readmit-retrain",
}

# PromQL words that are not metric names.
PROMQL_WORDS = frozenset(
    re.findall(
        r"\w+",
        """
        sum min max avg count stddev stdvar topk bottomk quantile count_values group
        by without on ignoring group_left group_right bool and or unless offset
        rate irate increase delta idelta deriv resets changes histogram_quantile abs ceil floor round
        clamp clamp_min clamp_max label_replace label_join vector scalar time absent absent_over_time
        sum_over_time avg_over_time max_over_time min_over_time count_over_time last_over_time sort sort_desc
        predict_linear exp ln log2 log10 sqrt timestamp
        """,
    )
)


def _load_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCUMENTS = _load_documents()


def _find(kind: str, name: str) -> dict:
    matches = [d for _, d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _validate(doc: dict) -> str:
    return kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- Kubernetes: schema validation -------------------------------------------------------------------


def test_manifests_exist_and_cover_the_expected_kinds() -> None:
    assert {p.name for p in K8S_DIR.glob("*.yaml")} >= {"qdrant.yaml", "grafana.yaml"}
    kinds = {(f, d["kind"]) for f, d in DOCUMENTS}
    for kind in ("Namespace", "StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy"):
        assert ("qdrant.yaml", kind) in kinds
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "NetworkPolicy"):
        assert ("grafana.yaml", kind) in kinds


@pytest.mark.parametrize(
    "doc", [d for _, d in DOCUMENTS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCUMENTS]
)
@pytest.mark.slow
def test_every_document_is_valid_against_the_kubernetes_schema(doc: dict) -> None:
    assert _validate(doc) == K8S_VERSION
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == "readmit"


def test_objects_are_unique_except_the_shared_namespace() -> None:
    seen: dict[tuple[str, str], dict] = {}
    for _, doc in DOCUMENTS:
        key = (doc["kind"], doc["metadata"]["name"])
        if key in seen:
            # Both files declare the namespace so that the folder applies in any order; they must agree.
            assert doc["kind"] == "Namespace" and doc == seen[key], f"duplicate object {key}"
        seen[key] = doc


def test_the_validator_rejects_broken_manifests() -> None:
    statefulset = _find("StatefulSet", "qdrant")
    _validate(statefulset)

    wrong_type = copy.deepcopy(statefulset)
    wrong_type["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError, match="three"):
        _validate(wrong_type)

    unknown_field = copy.deepcopy(statefulset)
    unknown_field["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        _validate(unknown_field)

    missing_required = copy.deepcopy(statefulset)
    del missing_required["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(kubernetes_validate.ValidationError, match="name"):
        _validate(missing_required)

    bad_probe = copy.deepcopy(_find("Deployment", "grafana"))
    bad_probe["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"n": 3000}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(bad_probe)


@pytest.mark.slow
def test_validation_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for _, doc in DOCUMENTS:
        _validate(doc)
    broken = copy.deepcopy(_find("Deployment", "grafana"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken)


# --- Kubernetes: structure ---------------------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _assert_resources(container: dict) -> None:
    resources = container["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section]), f"{container['name']} lacks {section}"


def _assert_mounts_resolve(workload: dict) -> None:
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"] for v in pod.get("volumes", [])}
    volumes |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"mount {mount['name']} has no volume"


def test_qdrant_statefulset_is_a_resilient_cluster() -> None:
    sts = _find("StatefulSet", "qdrant")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    container = _container(sts)

    assert spec["replicas"] >= 3
    assert _selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    assert container["image"] == "qdrant/qdrant:v1.12.4"
    assert {p["containerPort"]: p["name"] for p in container["ports"]} == {6333: "http", 6334: "grpc", 6335: "p2p"}

    headless = _find("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert _selects(headless["spec"]["selector"], spec["template"]["metadata"]["labels"])
    client = _find("Service", "qdrant")
    assert client["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert _selects(client["spec"]["selector"], spec["template"]["metadata"]["labels"])

    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "gp3"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    storage_mounts = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert storage_mounts and storage_mounts[0]["mountPath"] == "/qdrant/storage"
    _assert_mounts_resolve(sts)

    _assert_resources(container)
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 6333}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 6333}

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000  # above host UIDs (checkov CKV_K8S_40)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]  # owns the storage volume
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    env = {e["name"]: e.get("value") for e in container["env"]}
    key = next(e for e in container["env"] if e["name"] == "QDRANT__SERVICE__API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "qdrant-api-key", "key": "api-key"} and "value" not in key
    # The probes need no key: Qdrant exempts /livez and /readyz from authentication.
    assert {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")} <= {"/livez", "/readyz"}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    assert env["QDRANT_BOOTSTRAP_URI"].startswith(f"http://qdrant-0.{spec['serviceName']}.")
    assert env["QDRANT_BOOTSTRAP_URI"].endswith(":6335")

    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(term["labelSelector"]["matchLabels"], spec["template"]["metadata"]["labels"])


def test_qdrant_pdb_selects_the_statefulset_and_keeps_a_quorum() -> None:
    sts = _find("StatefulSet", "qdrant")
    pdb = _find("PodDisruptionBudget", "qdrant")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] >= 2
    assert pdb["spec"]["minAvailable"] > sts["spec"]["replicas"] // 2  # a Raft majority survives a drain


def test_qdrant_network_policy_limits_who_reaches_which_port() -> None:
    sts = _find("StatefulSet", "qdrant")
    policy = _find("NetworkPolicy", "qdrant")["spec"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["podSelector"]["matchLabels"], pod_labels)
    assert "Ingress" in policy["policyTypes"]

    by_ports = {frozenset(p["port"] for p in rule["ports"]): rule["from"] for rule in policy["ingress"]}
    assert set(by_ports) == {frozenset({6333, 6334}), frozenset({6333}), frozenset({6335})}
    (clients,) = by_ports[frozenset({6333, 6334})]
    assert clients["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "readmit"}
    (peers,) = by_ports[frozenset({6335})]
    assert "namespaceSelector" not in peers
    assert _selects(peers["podSelector"]["matchLabels"], pod_labels)
    # The Lambda functions (through the NLB) reach the REST port only, from the VPC CIDR the NLB also admits.
    (vpc,) = by_ports[frozenset({6333})]
    assert set(vpc) == {"ipBlock"}
    assert [vpc["ipBlock"]["cidr"]] == _find("Service", "qdrant-lb")["spec"]["loadBalancerSourceRanges"]


def test_lambda_reaches_qdrant_through_an_internal_tls_nlb() -> None:
    sts = _find("StatefulSet", "qdrant")
    service = _find("Service", "qdrant-lb")
    notes = service["metadata"]["annotations"]
    prefix = "service.beta.kubernetes.io/aws-load-balancer-"
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerClass"] == "service.k8s.aws/nlb"  # the AWS Load Balancer Controller
    assert notes[prefix + "scheme"] == "internal" and notes[prefix + "nlb-target-type"] == "ip"
    assert notes[prefix + "ssl-cert"].startswith("arn:aws:acm:")
    (port,) = service["spec"]["ports"]
    assert notes[prefix + "ssl-ports"] == str(port["port"]) == "6333"  # TLS on the port the functions call
    assert notes[prefix + "backend-protocol"] == "tcp"
    assert notes[prefix + "healthcheck-path"] == "/readyz"
    assert _selects(service["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    assert port["targetPort"] in {p["name"] for p in _container(sts)["ports"] if p["containerPort"] == 6333}
    readme = (DEPLOY / "README.md").read_text()
    for needed in ("VectorSubnetIds", "VectorSecurityGroupIds", "QdrantUrl", "READMIT_QDRANT_API_KEY_SECRET"):
        assert needed in readme, f"deploy/README.md does not say how Lambda uses {needed}"


def test_grafana_deployment_has_probes_resources_and_a_pdb() -> None:
    deployment = _find("Deployment", "grafana")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = _container(deployment)

    assert deployment["spec"]["replicas"] == 2
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/api/health"
    _assert_resources(container)
    _assert_mounts_resolve(deployment)
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Admin credentials are files from the Secret (GF_<setting>__FILE), never environment values.
    env = {e["name"]: e for e in container["env"]}
    assert not any("valueFrom" in e for e in env.values())
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for var in ("GF_SECURITY_ADMIN_USER__FILE", "GF_SECURITY_ADMIN_PASSWORD__FILE"):
        folder, _, key = env[var]["value"].rpartition("/")
        assert volumes[mounts[folder]]["secret"]["secretName"] == "grafana-admin" and key.startswith("admin-")
    # CloudWatch access comes from the service account's IAM role; no Kubernetes API token is mounted.
    pod = deployment["spec"]["template"]["spec"]
    account = _find("ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert pod["automountServiceAccountToken"] is False

    pdb = _find("PodDisruptionBudget", "grafana")
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert _selects(_find("Service", "grafana")["spec"]["selector"], labels)

    policy = _find("NetworkPolicy", "grafana")["spec"]
    assert _selects(policy["podSelector"]["matchLabels"], labels)
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [3000]


def _provisioning(configmap: str, key: str) -> dict:
    return yaml.safe_load(_find("ConfigMap", configmap)["data"][key])


def test_grafana_provisioning_wires_datasources_and_the_dashboard_folder() -> None:
    datasources = {d["type"]: d for d in _provisioning("grafana-datasources", "datasources.yaml")["datasources"]}
    assert datasources["prometheus"]["url"] == "http://prometheus.readmit.svc:9090"
    assert datasources["cloudwatch"]["jsonData"]["defaultRegion"]

    (provider,) = _provisioning("grafana-dashboard-providers", "dashboards.yaml")["providers"]
    assert provider["type"] == "file"
    deployment = _find("Deployment", "grafana")
    mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    dashboards_volume = next(n for n, path in mounts.items() if path == provider["options"]["path"])
    # The dashboard ConfigMap is made from deploy/grafana/readmit.json as the README says.
    dashboards_configmap = volumes[dashboards_volume]["configMap"]["name"]
    assert f"configmap {dashboards_configmap}" in (DEPLOY / "README.md").read_text()
    assert mounts["datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["dashboard-providers"] == "/etc/grafana/provisioning/dashboards"

    # Panels refer to the provisioned datasources by uid.
    uids = {d["uid"] for d in datasources.values()}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["datasource"]["uid"] in uids


# --- Grafana dashboard -------------------------------------------------------------------------------


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left after dropping strings, matchers, ranges, groupings."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]|e\d*|Inf|NaN", n)}


def test_metric_name_parser() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, route) (rate(foo_bucket{status=~"5.."}[$__rate_interval])))'
    assert _metric_names(expr) == {"foo_bucket"}
    assert _metric_names("sum(rate(a_total[5m])) / sum without (x) (b)") == {"a_total", "b"}


def test_every_readmit_cloudwatch_metric_on_the_dashboard_is_one_the_code_publishes() -> None:
    # The EMF metric names are string literals in the code that publishes them (telemetry, monitor, retrain).
    sources = " ".join(p.read_text() for d in ("chalicelib", "functions") for p in (ROOT / d).rglob("*.py"))
    for name in CLOUDWATCH_METRICS:
        assert f'"{name}"' in sources, f"no code publishes the CloudWatch metric {name}"


def test_dashboard_panels_are_complete_and_unique() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["type"] in {"prometheus", "cloudwatch"}
        assert panel["targets"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"]["type"] == panel["datasource"]["type"]


def test_dashboard_prometheus_queries_use_only_what_the_cluster_exposes() -> None:
    used = set()
    for panel in _panels():
        for target in panel["targets"]:
            if target["datasource"]["type"] != "prometheus":
                continue
            names = _metric_names(target["expr"])
            assert names, f"no metric in {target['expr']!r}"
            assert names <= QDRANT_METRICS, f"{panel['title']}: not a Qdrant metric: {names - QDRANT_METRICS}"
            used |= names
    assert {"rest_responses_total", "rest_responses_fail_total", "cluster_peers_total"} <= used


def test_dashboard_cloudwatch_queries_use_the_readmit_namespace() -> None:
    used = set()
    for panel in _panels():
        for target in panel["targets"]:
            if target["datasource"]["type"] != "cloudwatch":
                continue
            if target["namespace"] == "AWS/ApiGateway":
                assert target["metricName"] in APIGATEWAY_METRICS
                assert target["dimensions"] == {"ApiName": "readmit-$stage"}  # template.yaml names it readmit-<Stage>
                used.add(target["metricName"])
                continue
            assert target["namespace"] == "Readmit"
            assert target["metricName"] in CLOUDWATCH_METRICS
            assert target["dimensions"] == {"service": CLOUDWATCH_METRICS[target["metricName"]]}
            used.add(target["metricName"])
    # The API's own panels come from CloudWatch now: latency, predictions, API Gateway errors.
    assert used >= {"LatencyMs", "Predictions", "HighRiskPredictions", "4XXError", "5XXError"}
    assert used >= {"MaxFeaturePSI", "RiskPSI", "HighRiskRate", "DriftDetected", "ModelsPromoted", "ModelsRejected"}
    stage = [v for v in json.loads(DASHBOARD.read_text())["templating"]["list"] if v["name"] == "stage"]
    assert stage, "the dashboard needs a stage variable for readmit-$stage"


# --- Prometheus scrape config ------------------------------------------------------------------------


def _workloads() -> list[dict]:
    return [d for _, d in DOCUMENTS if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def _scraped(job: dict) -> list[tuple[dict, dict]]:
    """The (workload, container port) pairs a kubernetes_sd pod job would scrape among the objects defined here:
    pods matching its role selector and every ``keep`` rule on pod labels, ports kept by its port rules."""
    (sd,) = job["kubernetes_sd_configs"]
    wanted = dict(item.split("=", 1) for s in sd.get("selectors", []) for item in s["label"].split(","))
    keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    found = []
    for workload in _workloads():
        if workload["metadata"]["namespace"] not in sd["namespaces"]["names"]:
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if not _selects(wanted, labels):
            continue
        meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v for k, v in labels.items()}
        meta["__meta_kubernetes_pod_phase"] = "Running"
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for port in container.get("ports", []):
                values = {
                    **meta,
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                }
                if all(
                    re.fullmatch(r.get("regex", "(.*)"), ";".join(values.get(x, "") for x in r["source_labels"]))
                    for r in keeps
                ):
                    found.append((workload, port))
    return found


def test_prometheus_scrapes_only_what_the_manifests_run() -> None:
    config = yaml.safe_load(SCRAPE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"qdrant", "grafana"}  # the API runs on Lambda: no readmit-api pods to scrape
    for name, job in jobs.items():
        assert job["metrics_path"] == "/metrics"
        for rule in job["relabel_configs"]:
            assert rule.get("action", "replace") in {"keep", "drop", "replace", "labelmap"}
            re.compile(rule.get("regex", "(.*)"))
        targets = _scraped(job)
        assert targets, f"job {name} selects no pod and port defined in deploy/kubernetes"
        assert {w["metadata"]["name"] for w, _ in targets} == {name}
        assert len(targets) == 1, f"job {name} scrapes several ports: {[p for _, p in targets]}"
    ((_, qdrant_port),) = _scraped(jobs["qdrant"])
    assert qdrant_port["containerPort"] == 6333  # the REST port, where /metrics is
    # With an API key, /metrics needs it: Prometheus sends it as a bearer token read from the Secret.
    auth = jobs["qdrant"]["authorization"]
    assert auth["type"] == "Bearer" and "qdrant-api-key" in auth["credentials_file"]


def test_a_job_for_pods_that_do_not_exist_is_caught() -> None:
    config = yaml.safe_load(SCRAPE.read_text())
    ghost = copy.deepcopy(next(j for j in config["scrape_configs"] if j["job_name"] == "grafana"))
    ghost["kubernetes_sd_configs"][0]["selectors"][0]["label"] = "app.kubernetes.io/name=readmit-api"
    ghost["relabel_configs"][0]["regex"] = "readmit-api"
    assert _scraped(ghost) == []


# --- checkov over the manifests ------------------------------------------------------------------------


def _checkov() -> str:
    from tests.test_security import checkov

    return checkov()


def _declared_skips() -> list[tuple[str, str]]:
    skips = []
    for _, doc in DOCUMENTS:
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                skips.append((check, reason))
    return skips


@pytest.mark.slow
def test_checkov_finds_no_failed_check_in_the_kubernetes_manifests() -> None:
    args = ["-d", str(K8S_DIR), "--framework", "kubernetes", "--skip-download", "--compact", "--quiet", "-o", "json"]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    done = subprocess.run([_checkov(), *args], capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in report["results"].get("failed_checks", [])]
    assert not failed, failed
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100 and report["summary"]["skipped"] == len(_declared_skips())


def test_every_checkov_skip_in_the_manifests_gives_a_reason() -> None:
    for check, reason in _declared_skips():
        assert check.startswith(("CKV_K8S_", "CKV2_K8S_")) and len(reason) >= 40, (check, reason)
