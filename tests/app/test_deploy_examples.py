"""The deployment examples for several instances on one PostgreSQL state (docs/high-availability.md):
the Kubernetes manifests (examples/kubernetes/), the systemd template unit and
examples/postgresql-ha.toml. Every check reads its values from the files themselves: the port the
probes hit is the one the ConfigMap's configuration listens on, every secret reference of that
configuration is provided by the pod that reads it, and the configuration is read by the loader
the CLI uses."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.app.config import NotifySettings, _secrets_in, is_postgresql, load_config, unresolved_secrets
from core.app.http import split_listen
from tests.helpers import REPO

KUBERNETES = REPO / "examples" / "kubernetes"
SYSTEMD = REPO / "examples" / "systemd"
CONFIG_KEY = "defender-forwarder.toml"


def manifests(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text(encoding="utf-8")) if doc]


def every_manifest() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in manifests(path.name)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in every_manifest() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment() -> dict[str, Any]:
    return one("Deployment")


def job() -> dict[str, Any]:
    return one("Job")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    return only


def config_path_of(workload: dict[str, Any]) -> str:
    args = container(workload)["args"]
    return args[args.index("--config") + 1]


def config_text() -> str:
    """The configuration the pods read: the ConfigMap mounted at the path `--config` names."""
    spec, path = pod_spec(deployment()), config_path_of(deployment())
    for mount in container(deployment())["volumeMounts"]:
        if mount["mountPath"] == path:
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            return one("ConfigMap", volume["configMap"]["name"])["data"][mount["subPath"]]
    raise AssertionError(f"no volume is mounted at {path}")


def config_data() -> dict[str, Any]:
    return tomllib.loads(config_text())


def secret_refs_in(value: Any) -> list[str]:
    """Every env:NAME / file:PATH string of the TOML, wherever it stands."""
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in secret_refs_in(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in secret_refs_in(item)]
    return [value] if isinstance(value, str) and value.startswith(("env:", "file:")) else []


def secret_env(workload: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The container's variables taken from Secrets: name -> (Secret, key)."""
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container(workload).get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def secret_values() -> dict[tuple[str, str], str]:
    return {(doc["metadata"]["name"], key): value for doc in every_manifest() if doc["kind"] == "Secret"
            for key, value in {**doc.get("stringData", {}), **doc.get("data", {})}.items()}


def mounted_file(workload: dict[str, Any], path: str) -> tuple[str, str, str] | None:
    """(kind, name, key) of the ConfigMap or Secret key a file path of the container is, else None."""
    spec = pod_spec(workload)
    for mount in container(workload).get("volumeMounts", []):
        root = mount["mountPath"]
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        source = volume.get("configMap") or volume.get("secret")
        if source is None:
            continue
        kind, name = ("ConfigMap", source["name"]) if "configMap" in volume else ("Secret", source["secretName"])
        if "subPath" in mount and path == root:
            return kind, name, mount["subPath"]
        if "subPath" not in mount and Path(path).parent == Path(root):
            return kind, name, Path(path).name
    return None


def keys_of(kind: str, name: str) -> set[str]:
    doc = one(kind, name)
    return set(doc.get("data", {})) | set(doc.get("stringData", {}))


# --------------------------------------------------------------------------- Kubernetes


def test_every_manifest_parses_and_kustomization_lists_all_but_the_migrate_job() -> None:
    kustomization = manifests("kustomization.yaml")[0]
    others = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "migrate-job.yaml"}
    assert set(kustomization["resources"]) == others
    for doc in every_manifest():
        assert doc["apiVersion"] and doc["kind"], doc


def test_the_deployment_runs_two_instances_spread_over_nodes() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (term,) = pod_spec(deployment())["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_disruption_budget_keeps_one_of_these_pods() -> None:
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_probes_hit_healthz_and_readyz_on_the_port_the_configuration_listens_on() -> None:
    host, port = split_listen(config_data()["forwarder"]["http"]["listen"])
    assert host in ("0.0.0.0", "::"), "the kubelet probes the pod's address, not its loopback"
    ports = {p["name"]: p["containerPort"] for p in container(deployment())["ports"]}
    probes = {kind: container(deployment())[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == port


def test_the_network_policy_admits_the_status_port_of_these_pods() -> None:
    _, port = split_listen(config_data()["forwarder"]["http"]["listen"])
    policy = one("NetworkPolicy")
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [port]


@pytest.mark.parametrize("workload", [deployment, job], ids=["deployment", "migrate-job"])
def test_every_secret_and_configmap_the_pod_references_exists(workload: Any) -> None:
    for name, (secret, key) in secret_env(workload()).items():
        assert key in keys_of("Secret", secret), f"{name}: no key {key} in Secret {secret}"
    for volume in pod_spec(workload())["volumes"]:
        if "secret" in volume:
            keys_of("Secret", volume["secret"]["secretName"])
        if "configMap" in volume:
            keys_of("ConfigMap", volume["configMap"]["name"])


def test_every_secret_reference_of_the_configuration_is_provided_by_the_pod() -> None:
    refs = secret_refs_in(config_data())
    assert any(ref.startswith("env:") for ref in refs)
    provided = secret_env(deployment())
    for ref in refs:
        kind, _, target = ref.partition(":")
        if kind == "env":
            assert target in provided, f"{ref}: the pod sets no {target} from a Secret"
        else:
            found = mounted_file(deployment(), target)
            assert found and found[0] == "Secret" and found[2] in keys_of("Secret", found[1]), f"{ref}: not mounted"


def test_the_database_ca_is_mounted_where_the_configuration_reads_it() -> None:
    sslrootcert = config_data()["forwarder"]["postgresql"]["sslrootcert"]
    for workload in (deployment(), job()):
        found = mounted_file(workload, sslrootcert)
        assert found is not None, f"{sslrootcert} is not mounted in {workload['metadata']['name']}"
        kind, name, key = found
        assert key in keys_of(kind, name)


def test_the_configuration_is_read_by_the_clis_loader_and_selects_postgresql(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / CONFIG_KEY
    path.write_text(config_text(), encoding="utf-8")
    values = secret_values()
    for name, (secret, key) in secret_env(deployment()).items():
        monkeypatch.setenv(name, values[(secret, key)])
    config = load_config(path)
    assert is_postgresql(config.forwarder.state)
    assert config.forwarder.postgresql is not None and config.forwarder.postgresql.sslmode == "verify-full"
    assert config.forwarder.http is not None and config.forwarder.http.listen
    # Every secret of the configuration resolves from what the pod provides (the walker the
    # configuration names its secrets' key paths with).
    refs = [ref for _, ref in _secrets_in(config, "")]
    assert refs and not unresolved_secrets(refs)


def test_the_migrate_job_runs_state_migrate_on_the_same_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = container(job())["args"]
    assert args[:2] == ["state", "migrate"]
    assert config_path_of(job()) == config_path_of(deployment())
    assert mounted_file(job(), config_path_of(job())) == mounted_file(deployment(), config_path_of(deployment()))
    assert container(job())["image"] == container(deployment())["image"]
    # The database's secrets are the job's to provide too.
    path = tmp_path / CONFIG_KEY
    path.write_text(config_text(), encoding="utf-8")
    values = secret_values()
    for name, (secret, key) in secret_env(job()).items():
        monkeypatch.setenv(name, values[(secret, key)])
    config = load_config(path)
    assert config.forwarder.postgresql is not None
    assert not unresolved_secrets(ref for _, ref in _secrets_in(config.forwarder.postgresql, ""))
    assert pod_spec(job())["restartPolicy"] == "Never"


@pytest.mark.parametrize("workload", [deployment, job], ids=["deployment", "migrate-job"])
def test_the_pods_run_as_non_root_on_a_read_only_root(workload: Any) -> None:
    spec = pod_spec(workload())
    assert spec["securityContext"]["runAsNonRoot"] is True
    user = re.search(r"^USER (\d+)", (KUBERNETES / "Containerfile").read_text(), re.M)
    assert user and spec["securityContext"]["runAsUser"] == int(user.group(1))
    context = container(workload())["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert container(workload())["resources"]["limits"]["memory"]


def test_the_grace_period_outlasts_a_notify_message() -> None:
    """A clean stop (SIGTERM) flushes a [notify] message under way (its timeout) and releases the leases."""
    timeout = NotifySettings.model_fields["timeout"].default
    assert pod_spec(deployment())["terminationGracePeriodSeconds"] > timeout


def test_the_containerfile_installs_the_package_with_the_postgresql_extra() -> None:
    text = (KUBERNETES / "Containerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = {part for line in re.findall(r"^COPY (?!--from)(.+?) \S+$", text, re.M) for part in line.split()}
    packages = {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}
    assert packages <= copied
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    assert all((REPO / part).exists() for part in copied)
    extras = re.findall(r'"defender-forwarder\[(\w+)\]"', text)
    assert extras == ["postgresql"] and "postgresql" in project["project"]["optional-dependencies"]
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", text, re.M)
    assert entrypoint and yaml.safe_load(entrypoint.group(1)) == list(project["project"]["scripts"])


# --------------------------------------------------------------------------- systemd


def unit_lines(name: str) -> list[str]:
    return [line.strip() for line in (SYSTEMD / name).read_text().splitlines()]


def test_the_template_unit_runs_instance_i_with_its_own_configuration() -> None:
    lines = unit_lines("defender-forwarder@.service")
    (exec_start,) = [line for line in lines if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[1] == "run" and "%i" in argv[argv.index("--config") + 1]
    assert "RestartPreventExitStatus=2" in lines


def test_the_template_unit_keeps_every_setting_of_the_single_unit() -> None:
    single = [line for line in unit_lines("defender-forwarder.service")
              if "=" in line and not line.startswith(("#", "Description=", "ExecStart="))]
    template = unit_lines("defender-forwarder@.service")
    assert [line for line in single if line not in template] == []


# --------------------------------------------------------------------------- the TOML example


def test_the_postgresql_ha_example_is_read_by_the_clis_loader() -> None:
    path = REPO / "examples" / "postgresql-ha.toml"
    config = load_config(path)
    assert is_postgresql(config.forwarder.state)
    assert config.forwarder.postgresql is not None and config.forwarder.postgresql.password is not None
    assert len(config.tenants) >= 2
    assert config.forwarder.lease_ttl == 60 and config.forwarder.app_requests_per_10s == 130_000


def test_a_certificate_in_a_variable_as_the_configmap_offers_signs_a_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's alternative to the client secret: the PEM (key + certificate) in a variable,
    since a Secret volume's file is not the 0600 file of the forwarder's user a file: secret must be."""
    import trustme

    from core.sources.auth import AppSettings, certificate_problem

    reference = re.search(r'^\s*# certificate = "(env:\w+)"', config_text(), re.M)
    assert reference, "the ConfigMap offers no certificate in a variable"
    leaf = trustme.CA().issue_cert("mssp.example")
    pem = leaf.private_key_pem.bytes().decode() + leaf.cert_chain_pems[0].bytes().decode()
    monkeypatch.setenv(reference.group(1)[4:], pem)
    client_id = config_data()["apps"]["mssp"]["client_id"]
    assert certificate_problem(AppSettings(client_id=client_id, certificate=reference.group(1))) is None
