"""Every deployment file under cluster/ against its schema, and the security rules they keep.

Validators, each offline:
- Kubernetes resources, and the pod templates inside KubeRay resources, with
  kubernetes-validate's strict schemas (unknown fields are errors) for
  Kubernetes K8S_VERSION;
- KubeRay's own fields with cluster/kuberay/schema/, written from KubeRay
  v1.6.2's API reference (no package ships KubeRay's CRDs);
- the Compose file with the Compose specification's schema as check-jsonschema
  vendors it;
- the cluster-launcher YAML with Ray's own checks (prepare_config, then
  validate_config with the schema bundled in ray.autoscaler).

Each validator is shown to reject a deliberately broken copy, so a validator
that accepts everything cannot pass. The security rules (no literal secrets,
loopback or ClusterIP by default, token and basic authentication on) are
checked on the real files and shown to catch a planted violation.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
K8S_VERSION = "1.33.0"  # a release the managed Kubernetes services all run; kubernetes-validate ships its schemas
KUBERAY_SCHEMA = CLUSTER / "kuberay" / "schema" / "kuberay-v1.6.2.schema.yaml"
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")

# Files of Kubernetes manifests: KubeRay's (ray.io/v1) and core resources, told apart by apiVersion.
MANIFEST_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml")) + sorted((CLUSTER / "mlflow" / "k8s").glob("*.yaml"))
LAUNCHER_FILES = sorted((CLUSTER / "launcher").glob("*.yaml"))
COMPOSE_FILE = CLUSTER / "mlflow" / "compose.yaml"

# An environment variable with one of these in its name holds a secret.
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|KEY|CREDENTIAL", re.IGNORECASE)
# An assignment or flag that would put a secret on a command line.
SECRET_ON_COMMAND_LINE = re.compile(
    r"\b[A-Z0-9_]*(PASSWORD|TOKEN|SECRET|KEY)[A-Z0-9_]*=|--(password|token|secret)(=|\s|$)", re.IGNORECASE
)


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CLUSTER)) for p in paths]


def _values_of(node: Any, wanted: str) -> Iterator[str]:
    """Every string value under the key `wanted`, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == wanted and isinstance(value, str):
                yield value
            yield from _values_of(value, wanted)
    elif isinstance(node, list):
        for item in node:
            yield from _values_of(item, wanted)


def is_kuberay(resource: dict) -> bool:
    return resource.get("apiVersion", "").startswith("ray.io/")


def resources_in(paths: list[Path], kuberay: bool) -> list[tuple[str, dict]]:
    """(file:kind/name, resource) for every KubeRay resource, or every other one, in the files."""
    return [(f"{p.relative_to(CLUSTER)}:{r['kind']}/{r['metadata']['name']}", r)
            for p in paths for r in documents(p) if is_kuberay(r) == kuberay]


KUBERAY_RESOURCES = resources_in(MANIFEST_FILES, kuberay=True)
KUBERNETES_RESOURCES = resources_in(MANIFEST_FILES, kuberay=False)


# --- validators: each raises on an invalid document ---------------------------------------------


def validate_kubernetes(resource: dict) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def pod_templates(spec: dict, where: str = "spec") -> Iterator[tuple[str, dict]]:
    """The pod templates inside a KubeRay spec (RayCluster, RayJob or RayCronJob), wherever they nest."""
    if "headGroupSpec" in spec:
        yield f"{where}.headGroupSpec.template", spec["headGroupSpec"]["template"]
        for i, group in enumerate(spec.get("workerGroupSpecs", [])):
            yield f"{where}.workerGroupSpecs[{i}].template", group["template"]
    if "submitterPodTemplate" in spec:
        yield f"{where}.submitterPodTemplate", spec["submitterPodTemplate"]
    if "rayClusterSpec" in spec:
        yield from pod_templates(spec["rayClusterSpec"], f"{where}.rayClusterSpec")
    if "jobTemplate" in spec:
        yield from pod_templates(spec["jobTemplate"], f"{where}.jobTemplate")


def validate_pod_template(template: dict) -> None:
    """A pod template as Kubernetes checks it: inside a core/v1 PodTemplate."""
    validate_kubernetes({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template})


def validate_autoscaler_container(options: dict) -> None:
    """autoscalerOptions' Kubernetes fields, checked as the container KubeRay makes of them."""
    container = {"name": "autoscaler", "image": options.get("image", "autoscaler")}
    for field in ("resources", "securityContext", "env", "envFrom", "volumeMounts", "imagePullPolicy"):
        if field in options:
            container[field] = options[field]
    validate_pod_template({"spec": {"containers": [container]}})


def kuberay_specs(resource: dict) -> Iterator[dict]:
    """The RayCluster specs inside a KubeRay resource (for autoscalerOptions and the security rules)."""
    spec = resource["spec"]
    for candidate in (spec, spec.get("rayClusterSpec"), spec.get("jobTemplate", {}).get("rayClusterSpec")):
        if candidate and "headGroupSpec" in candidate:
            yield candidate


@cache
def kuberay_schema() -> dict:
    schema = yaml.safe_load(KUBERAY_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate_kuberay(resource: dict) -> None:
    """KubeRay's fields against our schema, by the resource's kind (a clearer error than the file's oneOf)."""
    kind = resource.get("kind")
    if kind not in KUBERAY_KINDS:
        raise jsonschema.ValidationError(f"kind {kind!r} is not one of {KUBERAY_KINDS}")
    schema = {key: value for key, value in kuberay_schema().items() if key != "oneOf"}
    schema["$ref"] = f"#/$defs/{kind}"
    jsonschema.Draft202012Validator(schema).validate(resource)


def validate_kuberay_resource(resource: dict) -> None:
    """The whole of a KubeRay resource: its own fields, then the Kubernetes objects inside it."""
    validate_kuberay(resource)
    for _, template in pod_templates(resource["spec"]):
        validate_pod_template(template)
    for spec in kuberay_specs(resource):
        validate_autoscaler_container(spec.get("autoscalerOptions", {}))


@cache
def compose_schema() -> dict:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendored.joinpath("compose-spec.json").read_text())


def validate_compose(document: dict) -> None:
    jsonschema.Draft202012Validator(compose_schema()).validate(document)


def validate_launcher(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


# --- the files pass -----------------------------------------------------------------------------


def test_every_deployment_file_is_checked():
    checked = set(MANIFEST_FILES) | set(LAUNCHER_FILES) | {COMPOSE_FILE}
    deployment_dirs = [CLUSTER / "kuberay", CLUSTER / "launcher", CLUSTER / "mlflow"]
    yaml_files = {p for d in deployment_dirs for p in d.rglob("*.y*ml") if p != KUBERAY_SCHEMA}
    assert yaml_files == checked, f"not checked: {sorted(map(str, yaml_files - checked))}"
    assert all(documents(p) for p in MANIFEST_FILES), "a manifest file without a resource"
    assert {r["kind"] for _, r in KUBERAY_RESOURCES} == set(KUBERAY_KINDS)
    assert LAUNCHER_FILES and KUBERNETES_RESOURCES


@pytest.mark.parametrize("where,resource", KUBERNETES_RESOURCES, ids=[w for w, _ in KUBERNETES_RESOURCES])
def test_kubernetes_resources_are_valid(where, resource):
    validate_kubernetes(resource)


@pytest.mark.parametrize("where,resource", KUBERAY_RESOURCES, ids=[w for w, _ in KUBERAY_RESOURCES])
def test_kuberay_resources_are_valid(where, resource):
    validate_kuberay_resource(resource)


def test_kuberay_resources_hold_pod_templates_that_get_checked():
    found = {r["kind"]: [where for where, _ in pod_templates(r["spec"])] for _, r in KUBERAY_RESOURCES}
    assert found["RayCluster"] == [
        "spec.headGroupSpec.template", "spec.workerGroupSpecs[0].template", "spec.workerGroupSpecs[1].template"]
    assert found["RayJob"] == ["spec.submitterPodTemplate"]
    assert found["RayCronJob"] == ["spec.jobTemplate.submitterPodTemplate"]


def test_compose_file_follows_the_compose_specification():
    validate_compose(documents(COMPOSE_FILE)[0])


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=ids(LAUNCHER_FILES))
def test_launcher_configs_pass_rays_own_validation(path):
    validate_launcher(documents(path)[0])


def entrypoints() -> list[tuple[str, str]]:
    return [(where, e) for where, r in KUBERAY_RESOURCES for e in _values_of(r["spec"], "entrypoint")]


@pytest.mark.parametrize("where,entrypoint", entrypoints(), ids=[w for w, _ in entrypoints()])
def test_job_entrypoints_are_tvp_runs_of_shipped_pipelines_with_their_parameters(where, entrypoint):
    from pipelines.cli import _build_parser
    from pipelines.workflow_spec import load_pipeline, resolve_params

    # The submitter's shell expands $(date ...) (the RayCronJob's daily run name) before Ray sees it.
    words = shlex.split(re.sub(r"\$\(date [^)]*\)", "20261130", entrypoint))
    assert words[:2] == ["tvp", "run"], where
    args = _build_parser().parse_args(words[1:])
    spec, _ = load_pipeline(args.pipeline)
    resolve_params(spec, args.param)  # raises for an unknown or a missing parameter
    assert args.name and args.workdir == "/mnt/tvp/work", "a resumable name, and the work volume every pod mounts"


def test_images_pin_what_pyproject_pins_and_run_as_a_user():
    import tomllib

    pins = dict(re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(.+)", dep).groups()
                for dep in tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]["dependencies"])
    tvp_image = (CLUSTER / "image" / "Dockerfile").read_text()
    mlflow_image = (CLUSTER / "mlflow" / "Dockerfile").read_text()
    assert f"torch=={pins['torch']}" in tvp_image
    assert f"mlflow[auth]=={pins['mlflow']}" in mlflow_image  # client and server at one version
    for image in (tvp_image, mlflow_image):
        users = re.findall(r"^USER (\S+)", image, re.MULTILINE)
        assert users and users[-1].split(":")[0] not in ("0", "root"), "the image ends as a non-root user"


# --- each validator rejects a broken copy -------------------------------------------------------


def _doc(relative: str, kind: str | None = None) -> dict:
    docs = documents(CLUSTER / relative)
    return copy.deepcopy(next(d for d in docs if kind is None or d.get("kind") == kind))


def _broken(relative: str, kind: str | None, change: Callable[[dict], Any]) -> dict:
    doc = _doc(relative, kind)
    change(doc)
    return doc


BROKEN = {
    "k8s: misspelt container field": (
        validate_kubernetes,
        _broken("mlflow/k8s/mlflow.yaml", "Deployment",
                lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"))),
    "k8s: replicas as a word": (
        validate_kubernetes,
        _broken("mlflow/k8s/postgres.yaml", "StatefulSet", lambda d: d["spec"].update(replicas="one"))),
    "pod template: env without a name": (
        validate_kuberay_resource,
        _broken("kuberay/raycluster.yaml", None,
                lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append({"value": "x"}))),
    "pod template: unknown field in a worker": (
        validate_kuberay_resource,
        _broken("kuberay/raycluster.yaml", None,
                lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"].update(gpus=1))),
    "autoscaler: resources keyed by cpu, not requests or limits": (
        validate_kuberay_resource,
        _broken("kuberay/raycluster.yaml", None, lambda d: d["spec"]["autoscalerOptions"].update(resources={"cpu": 1}))),
    "kuberay: misspelt spec field": (
        validate_kuberay,
        _broken("kuberay/raycluster.yaml", None, lambda d: d["spec"].update(enableInTreeAutoscalling=True))),
    "kuberay: worker group without maxReplicas": (
        validate_kuberay,
        _broken("kuberay/raycluster.yaml", None, lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"))),
    "kuberay: token auth on a Ray before 2.52": (
        validate_kuberay,
        _broken("kuberay/raycluster.yaml", None, lambda d: d["spec"].update(rayVersion="2.51.1"))),
    "kuberay: job with neither cluster nor selector": (
        validate_kuberay,
        _broken("kuberay/rayjob-clip-pretrain.yaml", None, lambda d: d["spec"].pop("clusterSelector"))),
    "kuberay: selector mode with KubeRay retries": (
        validate_kuberay,
        _broken("kuberay/rayjob-clip-continue.yaml", None, lambda d: d["spec"].update(backoffLimit=2))),
    "kuberay: cron schedule in words": (
        validate_kuberay,
        _broken("kuberay/raycronjob-clip-continue.yaml", None, lambda d: d["spec"].update(schedule="every night"))),
    "kuberay: job name too long for KubeRay": (
        validate_kuberay,
        _broken("kuberay/rayjob-clip-pretrain.yaml", None, lambda d: d["metadata"].update(name="x" * 48))),
    "compose: unknown service key": (
        validate_compose,
        _broken("mlflow/compose.yaml", None, lambda d: d["services"]["mlflow"].update(restart_policy="always"))),
    "compose: depends_on condition misspelt": (
        validate_compose,
        _broken("mlflow/compose.yaml", None,
                lambda d: d["services"]["mlflow"]["depends_on"]["mlflow-db"].update(condition="healthy"))),
    "launcher: misspelt top-level key": (
        validate_launcher,
        _broken("launcher/aws.yaml", None, lambda d: d.update(idle_timeout_minute=5))),
    "launcher: head type that is not a node type": (
        validate_launcher,
        _broken("launcher/gcp.yaml", None, lambda d: d.update(head_node_type="ray-head"))),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_validators_reject_a_broken_copy(case):
    validate, document = BROKEN[case]
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate(document)


# --- security rules -----------------------------------------------------------------------------


def env_lists(node: Any) -> Iterator[list]:
    """Every Kubernetes env list in a document, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield value
            yield from env_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from env_lists(item)


def literal_secrets_in_kubernetes(document: dict) -> list[str]:
    """Secret-named env vars given a value instead of a secretKeyRef, Secrets with data, secrets in entrypoints."""
    found = []
    for env in env_lists(document):
        for var in env:
            if SECRET_NAME.search(var.get("name", "")) and "secretKeyRef" not in var.get("valueFrom", {}):
                found.append(f"env {var.get('name')} is not from a secretKeyRef")
    if document.get("kind") == "Secret" and (document.get("data") or document.get("stringData")):
        found.append(f"Secret {document['metadata']['name']} carries values")
    for entrypoint in _values_of(document, "entrypoint"):
        if SECRET_ON_COMMAND_LINE.search(entrypoint):
            found.append(f"entrypoint names a secret: {entrypoint}")
    return found


def literal_secrets_in_compose(document: dict) -> list[str]:
    """Secret-named variables must point at a Compose secret file (NAME_FILE=/run/secrets/...)."""
    found = []
    for name, service in document["services"].items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for var, value in environment.items():
            if SECRET_NAME.search(var) and not (var.endswith("_FILE") and str(value).startswith("/run/secrets/")):
                found.append(f"{name}: {var} is not read from a secret file")
        for word in _strings(service.get("command", [])):
            if SECRET_ON_COMMAND_LINE.search(word):
                found.append(f"{name}: command names a secret: {word}")
    return found


def literal_secrets_in_launcher(config: dict) -> list[str]:
    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    return [f"command names a secret: {c}" for c in commands if SECRET_ON_COMMAND_LINE.search(c)]


def _strings(node: Any) -> list[str]:
    return [node] if isinstance(node, str) else [s for item in node for s in _strings(item)]


def test_no_manifest_holds_a_literal_secret():
    for where, document in KUBERAY_RESOURCES + KUBERNETES_RESOURCES:
        assert literal_secrets_in_kubernetes(document) == [], where
    assert literal_secrets_in_compose(documents(COMPOSE_FILE)[0]) == []
    for path in LAUNCHER_FILES:
        assert literal_secrets_in_launcher(documents(path)[0]) == [], path


def test_secret_checks_catch_planted_secrets():
    cluster = _doc("kuberay/raycluster.yaml")
    container = cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    # a new list: the file's env is one YAML anchor that head and workers share
    container["env"] = [*container["env"], {"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"}]
    assert literal_secrets_in_kubernetes(cluster) == ["env MLFLOW_TRACKING_PASSWORD is not from a secretKeyRef"]

    job = _doc("kuberay/rayjob-clip-pretrain.yaml")
    job["spec"]["entrypoint"] = "MLFLOW_TRACKING_PASSWORD=hunter2 " + job["spec"]["entrypoint"]
    assert len(literal_secrets_in_kubernetes(job)) == 1

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}
    assert literal_secrets_in_kubernetes(secret) == ["Secret s carries values"]

    compose = _doc("mlflow/compose.yaml")
    compose["services"]["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] = "hunter2"
    assert literal_secrets_in_compose(compose) == ["mlflow: MLFLOW_AUTH_ADMIN_PASSWORD is not read from a secret file"]

    launcher = _doc("launcher/aws.yaml")
    launcher["head_start_ray_commands"].append("export RAY_AUTH_TOKEN=hunter2")
    assert len(literal_secrets_in_launcher(launcher)) == 1


def _compose_default(text: str) -> str:
    """A Compose value as it reads with no variables set: ${NAME:-default} and ${NAME-default} give default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)


def exposure_problems_in_kubernetes(document: dict) -> list[str]:
    found = []
    kind = document.get("kind")
    if kind == "Service" and document["spec"].get("type", "ClusterIP") != "ClusterIP":
        found.append(f"Service {document['metadata']['name']} is {document['spec']['type']}")
    if kind in ("Ingress", "Gateway", "HTTPRoute"):
        found.append(f"{kind} {document['metadata']['name']} exposes a service")
    if kind in KUBERAY_KINDS:
        for spec in kuberay_specs(document):
            head = spec["headGroupSpec"]
            if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress", False):
                found.append(f"{kind} {document['metadata']['name']}: the Ray head is exposed")
    return found


def exposure_problems_in_compose(document: dict) -> list[str]:
    found = []
    for name, service in document["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip = _compose_default(str(port.get("host_ip", "")))
            else:
                parts = _compose_default(str(port)).rsplit(":", 2)
                host_ip = parts[0] if len(parts) == 3 else ""
            if host_ip != "127.0.0.1":
                found.append(f"{name} publishes {port} beyond loopback")
    return found


def test_services_default_to_cluster_ip_or_loopback():
    for where, document in KUBERAY_RESOURCES + KUBERNETES_RESOURCES:
        assert exposure_problems_in_kubernetes(document) == [], where
    assert exposure_problems_in_compose(documents(COMPOSE_FILE)[0]) == []
    for path in LAUNCHER_FILES:
        head_start = " ".join(documents(path)[0]["head_start_ray_commands"])
        assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start, path


def test_exposure_checks_catch_planted_exposure():
    service = _doc("mlflow/k8s/mlflow.yaml", "Service")
    service["spec"]["type"] = "LoadBalancer"
    assert exposure_problems_in_kubernetes(service) == ["Service mlflow is LoadBalancer"]

    cluster = _doc("kuberay/raycluster.yaml")
    cluster["spec"]["headGroupSpec"]["enableIngress"] = True
    assert exposure_problems_in_kubernetes(cluster) == ["RayCluster tvp: the Ray head is exposed"]

    compose = _doc("mlflow/compose.yaml")
    compose["services"]["mlflow"]["ports"] = ["5000:5000", {"target": 9001, "published": "9001"}]
    assert len(exposure_problems_in_compose(compose)) == 2


def test_authentication_is_on_everywhere():
    for where, document in KUBERAY_RESOURCES:
        if document["kind"] == "RayCluster":
            assert document["spec"]["authOptions"] == {"mode": "token", "secretName": "tvp-ray-token"}, where
        else:  # jobs run on that cluster, so under its token
            spec = document["spec"].get("jobTemplate", document["spec"])
            assert spec["clusterSelector"] == {"ray.io/cluster": "tvp"}, where
    for path in LAUNCHER_FILES:
        config = documents(path)[0]
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            assert "export RAY_AUTH_MODE=token" in " ".join(config[key]), (path, key)
        assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    servers = [documents(CLUSTER / "mlflow" / "k8s" / "mlflow.yaml")[1]["spec"]["template"]["spec"]["containers"][0]["args"],
               documents(COMPOSE_FILE)[0]["services"]["mlflow"]["command"]]
    for args in servers:
        assert "--app-name=basic-auth" in args and "--serve-artifacts" in args
