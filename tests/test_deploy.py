"""What `deploy/` ships: Kubernetes manifests (checked offline against the Kubernetes schemas and
against each other), systemd units (checked with `systemd-analyze verify`) and the Containerfile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import Settings
from app.server.runner import DRAIN_SECONDS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest and newest Kubernetes versions the manifests are checked against (strict schemas).
VERSIONS = ("1.30.0", "1.34.0")
UVICORN_GRACE = DRAIN_SECONDS + 5  # `timeout_graceful_shutdown` in app.server.runner


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append(document)
    return found


DOCUMENTS = documents()
IDS = [f"{d['kind']}/{d['metadata']['name']}" for d in DOCUMENTS]


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("document", DOCUMENTS, ids=IDS)
def test_manifest_matches_the_kubernetes_schema(document: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(str(exc).splitlines()[0])


def test_the_schema_check_catches_a_mistake() -> None:
    broken = yaml.safe_load(yaml.safe_dump(find("Deployment", "realtime-edge")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


def test_every_setting_named_in_the_manifests_exists() -> None:
    known = {name for name, _ in Settings.variables()}
    named = set(find("ConfigMap", "realtime-settings")["data"])
    for workload in ("realtime-minter", "realtime-edge"):
        for container in pod_spec(find("Deployment", workload))["containers"]:
            named |= {env["name"] for env in container.get("env", [])}
    assert named - known == set()


@pytest.mark.parametrize("name", ["realtime-minter", "realtime-edge"])
def test_services_select_their_pods_and_every_secret_exists(name: str) -> None:
    deployment, service = find("Deployment", name), find("Service", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    secrets = {d["metadata"]["name"] for d in DOCUMENTS if d["kind"] == "Secret"}
    for volume in pod_spec(deployment)["volumes"]:
        assert volume["secret"]["secretName"] in secrets
    ports = {p["name"] for c in pod_spec(deployment)["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


@pytest.mark.parametrize("name", ["realtime-minter", "realtime-edge", "realtime-redis"])
def test_pods_run_unprivileged(name: str) -> None:
    kind = "StatefulSet" if name == "realtime-redis" else "Deployment"
    spec = pod_spec(find(kind, name))
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]


def test_only_the_minter_holds_private_keys() -> None:
    minter = {v["secret"]["secretName"] for v in pod_spec(find("Deployment", "realtime-minter"))["volumes"]}
    edge = {v["secret"]["secretName"] for v in pod_spec(find("Deployment", "realtime-edge"))["volumes"]}
    assert "realtime-signing-keys" in minter and "realtime-signing-keys" not in edge
    assert "realtime-api-keys" not in edge
    env = {e["name"]: e for e in pod_spec(find("Deployment", "realtime-edge"))["containers"][0]["env"]}
    assert env["REALTIME_JWKS_URL"]["value"].startswith("http://realtime-minter.")


def test_edges_drain_before_they_are_killed() -> None:
    edge = find("Deployment", "realtime-edge")
    spec = pod_spec(edge)
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # Kubernetes kills the pod after the grace period, which counts the preStop hook too.
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + DRAIN_SECONDS + UVICORN_GRACE
    assert edge["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_edges_scale_and_keep_a_budget() -> None:
    hpa = find("HorizontalPodAutoscaler", "realtime-edge")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "realtime-edge",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find("PodDisruptionBudget", "realtime-edge")
    labels = pod_spec(find("Deployment", "realtime-edge")) and find("Deployment", "realtime-edge")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= labels["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_redis_never_forgets_a_used_ticket() -> None:
    redis = find("StatefulSet", "realtime-redis")
    args = pod_spec(redis)["containers"][0]["args"]
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "always"
    assert options["--maxmemory-policy"] == "noeviction"
    mount = pod_spec(redis)["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == options["--dir"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == mount["name"]
    host = find("ConfigMap", "realtime-settings")["data"]["REALTIME_REPLAY_URL"]
    assert host.startswith(
        f"redis://realtime-redis-0.{find('Service', 'realtime-redis')['metadata']['name']}:"
    )


def test_ingress_passes_websockets_to_the_edges_and_exposes_nothing_else() -> None:
    ingress = find("Ingress", "realtime")
    annotations = ingress["metadata"]["annotations"]
    idle = Settings().idle_timeout_seconds
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= idle
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= idle
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/v3/realtime"] == "realtime-edge"
    assert paths["/v3/realtime-sessions"] == "realtime-minter"
    assert not {"/", "/metrics", "/readyz", "/dev/ticket"} & set(paths)
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]


# systemd --------------------------------------------------------------------------------------

UNITS = sorted(p.name for p in (DEPLOY / "systemd").glob("*.service"))


def unit(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def systemd_analyze() -> str:
    """The `systemd-analyze` binary; skip without it, but fail in CI, where a skip would hide a gap."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    return analyze


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = systemd_analyze()
    # verify checks that ExecStart's program exists: point it at this checkout's interpreter.
    text = (
        (DEPLOY / "systemd" / name)
        .read_text()
        .replace("/opt/realtime-tickets/venv/bin/python", sys.executable)
    )
    (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_systemd_verify_catches_a_mistake(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    (tmp_path / "bad.service").write_text("[Service]\nExecStart=/bin/true\nKillMode=sometimes\n")
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "bad.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "kill mode" in result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_runs_the_service_unprivileged_and_drains(name: str) -> None:
    values = unit(name)
    assert values["User"] != ["root"] and values["NoNewPrivileges"] == ["yes"]
    assert values["KillMode"] == ["mixed"] and values["KillSignal"] == ["SIGTERM"]
    assert int(values["TimeoutStopSec"][0]) >= DRAIN_SECONDS + UVICORN_GRACE
    command = values["ExecStart"][0].split()
    assert command[1:3] == ["-m", "app.serve"]
    env_file = values["EnvironmentFile"][0]
    example = DEPLOY / "systemd" / Path(env_file).name
    assert example.exists(), f"{example} (the example of {env_file})"
    known = {n for n, _ in Settings.variables()}
    named = {
        line.split("=", 1)[0] for line in example.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    }
    assert named and named - known == set()
    if "--workers" in command:
        assert "REALTIME_REPLAY_URL=redis://" in example.read_text()


# The image ------------------------------------------------------------------------------------


def test_containerfile_runs_as_a_non_root_user_and_copies_what_exists() -> None:
    lines = [line.strip() for line in (DEPLOY / "Containerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert instructions.index(next(i for i in instructions if i.startswith("USER "))) > max(
        index for index, line in enumerate(instructions) if line.startswith("RUN ")
    )
    for line in instructions:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["python", "-m", "app.serve"]' in instructions
