"""kubernetes/: schema-valid, and consistent with the image and the node's configuration.

No cluster exists here. The manifests are checked against Kubernetes' OpenAPI schemas with the
`kubernetes-validate` package (offline: it ships the schemas; skipped with a reason if it is not
installed), and by loading them: every pod's RAFT_NODE_ID (its name) must resolve, with the
ConfigMap's config and the container's env, to a node whose ports, addresses and data directory
match the container ports, the headless Service, the probes and the volume.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from raftkv.server.config import Address, Settings, load_settings
from raftkv.server.http import create_app

from ..server.fakes import FakeNode, make_settings
from .deployfiles import KUBERNETES_DIR, final_stage, kubernetes_docs, kubernetes_kind

# The oldest and the newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.25.0", "1.37.0")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    import kubernetes_validate

    docs = kubernetes_docs()
    assert {d["kind"] for d in docs} == {
        "StatefulSet",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for doc in docs:
        # strict: unknown fields (a typo) are errors too.
        kubernetes_validate.validate(doc, version, strict=True)


def _container() -> dict[str, Any]:
    sts = kubernetes_kind("StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _mount(container: dict[str, Any], volume: str) -> PurePosixPath:
    (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return PurePosixPath(path)


def _pod_settings(tmp_path: Path, pod: str) -> Settings:
    """load_settings as the container in `pod` runs it: its env, the ConfigMap as its file."""
    sts, container = kubernetes_kind("StatefulSet"), _container()
    config_map = kubernetes_kind("ConfigMap")
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    env: dict[str, str] = {}
    config_file: Path | None = None
    for var in container["env"]:
        if "valueFrom" in var:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, var
            env[var["name"]] = pod
        else:
            env[var["name"]] = var["value"]
    # KV_CONFIG must name a key of the ConfigMap mounted as a volume.
    config_path = PurePosixPath(env["KV_CONFIG"])
    for mount in container["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        if "configMap" in volume and config_path.parent == PurePosixPath(mount["mountPath"]):
            assert volume["configMap"]["name"] == config_map["metadata"]["name"]
            config_file = tmp_path / pod / config_path.name
            config_file.parent.mkdir(parents=True, exist_ok=True)
            config_file.write_text(config_map["data"][config_path.name], encoding="utf-8")
    assert config_file is not None, f"KV_CONFIG {config_path} is not in a mounted ConfigMap"
    env["KV_CONFIG"] = str(config_file)
    return load_settings(env=env)


def test_every_pod_resolves_to_its_node(tmp_path: Path) -> None:
    sts, container = kubernetes_kind("StatefulSet"), _container()
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    service = sts["spec"]["serviceName"]
    pods = [f"{name}-{i}" for i in range(replicas)]
    ports = _ports(container)
    views = {pod: _pod_settings(tmp_path, pod) for pod in pods}
    for pod, s in views.items():
        assert s.node_id == pod
        assert s.bootstrap_id == pods[0]
        # Bind every interface, advertise the pod's stable DNS name under the headless Service.
        assert s.raft_listen == Address("0.0.0.0", ports["raft"])
        assert s.http_listen == Address("0.0.0.0", ports["http"])
        assert s.raft_address == Address(f"{pod}.{service}", ports["raft"])
        assert s.http_address == Address(f"{pod}.{service}", ports["http"])
        assert PurePosixPath(s.data_dir.as_posix()).parent == _mount(container, "data")
        assert s.log_format == "json"
    first = views[pods[0]]
    assert list(first.raft_peers) == pods  # one entry per replica, no more, no less
    for s in views.values():
        assert s.raft_peer_strings() == first.raft_peer_strings()
        assert s.http_peer_strings() == first.http_peer_strings()


def test_statefulset_shape() -> None:
    sts, container = kubernetes_kind("StatefulSet"), _container()
    spec, pod_spec = sts["spec"], sts["spec"]["template"]["spec"]
    assert sts["metadata"]["name"] == "distributed-kv-store"
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod_spec["terminationGracePeriodSeconds"] >= 15
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and _mount(container, "data") == PurePosixPath(
        "/data"
    )
    assert container["image"] == "distributed-kv-store:latest"
    # The pod runs as the image's user; fsGroup makes the claimed volume writable for it.
    uid, _, gid = final_stage().one("USER").args[0].partition(":")
    security = pod_spec["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (
        int(uid),
        int(gid),
        int(gid),
    )
    assert security["runAsNonRoot"] is True
    # The image's entrypoint runs unchanged: no command/args override.
    assert "command" not in container and "args" not in container
    # Exposed by the image = declared by the pod.
    exposed = {int(p) for p in final_stage().one("EXPOSE").args}
    assert set(_ports(container).values()) == exposed


def test_probes_hit_the_app_routes(tmp_path: Path) -> None:
    container = _container()
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], ready["port"]) == ("/ready", "http")
    assert (live["path"], live["port"]) == ("/health", "http")
    # The paths are GET routes of the real HTTP app.
    app = create_app(FakeNode(), make_settings(tmp_path))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert {("GET", "/ready"), ("GET", "/health")} <= routes


def test_services_and_disruption_budget() -> None:
    sts, container = kubernetes_kind("StatefulSet"), _container()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    ports = _ports(container)
    services = {d["metadata"]["name"]: d for d in kubernetes_docs() if d["kind"] == "Service"}
    headless = services.pop(sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in headless["spec"]["ports"]} == set(ports)
    (client,) = services.values()
    assert client["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in client["spec"]["ports"]] == [
        (ports["http"], "http")
    ]
    pdb = kubernetes_kind("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    replicas = sts["spec"]["replicas"]
    available = replicas - pdb["maxUnavailable"] if "maxUnavailable" in pdb else pdb["minAvailable"]
    assert available >= replicas // 2 + 1  # a Raft quorum stays up through any drain


def test_every_manifest_is_in_the_directory_listing() -> None:
    # `kubectl apply -f kubernetes/` applies every *.yaml there: nothing else may live there.
    files = sorted(p.name for p in KUBERNETES_DIR.iterdir())
    assert files == [
        "configmap.yaml",
        "networkpolicy.yaml",
        "pdb.yaml",
        "services.yaml",
        "statefulset.yaml",
    ]
    for path in KUBERNETES_DIR.iterdir():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


def test_network_policy_admits_peer_traffic_only_from_the_statefulset() -> None:
    sts, container = kubernetes_kind("StatefulSet"), _container()
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    policy = kubernetes_kind("NetworkPolicy")["spec"]
    # it applies to the StatefulSet's pods, and restricts what comes in
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    ports = _ports(container)
    raft_rules = [
        r
        for r in policy["ingress"]
        if any(p["port"] in ("raft", ports["raft"]) for p in r["ports"])
    ]
    (raft_rule,) = raft_rules
    (source,) = raft_rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector / ipBlock: same pods only
    assert source["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["port"] for p in raft_rule["ports"]] == ["raft"]
    # the HTTP API stays open to clients
    http_rules = [r for r in policy["ingress"] if any(p["port"] == "http" for p in r["ports"])]
    assert http_rules and "from" not in http_rules[0]


def test_tls_secret_is_mounted_read_only_and_optional() -> None:
    sts, container = kubernetes_kind("StatefulSet"), _container()
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["tls"]["secret"]
    assert secret["secretName"] == "kv-store-tls"
    assert secret["optional"] is True  # the plain walkthrough needs no Secret
    assert (
        secret["defaultMode"] == 0o440
    )  # owner root, group fsGroup: the node reads, no one writes
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert mount["readOnly"] is True and mount["mountPath"] == "/etc/raftkv-tls"
