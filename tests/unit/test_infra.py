"""Deployment files held against the code they deploy.

There is no Docker engine, cluster or AWS account here, so each file is parsed and compared
with what the package really has: CLI flags, routes, configuration keys, the boto3 calls of the
S3 destination. A renamed flag, route or setting, or a new S3 call, fails here first.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from receiver import cli
from receiver.app import routes
from receiver.config import (
    ProviderSettings,
    ServerSettings,
    Settings,
    WorkerSettings,
    load_settings,
)
from receiver.providers import REGISTRY

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose and k8s files")

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_DIR = INFRA / "compose"
K8S_DIR = INFRA / "k8s"
TF_DIR = INFRA / "terraform"
PLACEHOLDER_SECRET = "placeholder-secret-value-0123456789"


# --- shared helpers ---------------------------------------------------------------------------


def get_routes() -> set[str]:
    return {r.path for r in routes() if r.methods and "GET" in r.methods}


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional, unions, Annotated unwrapped)."""
    args = get_args(annotation)
    origin = get_origin(annotation)
    if origin is None:
        return [annotation]
    if origin in (dict, list):
        return [annotation]
    out: list[Any] = []
    for arg in args:
        if isinstance(arg, type) or get_origin(arg) is not None:
            out.extend(_unwrap(arg))
    return out


def settings_key_exists(path: list[str], model: type[BaseModel] = Settings) -> bool:
    """Whether ``a.b.c`` names a field of Settings, through dicts of named sections."""
    if not path:
        return False
    head, rest = path[0], path[1:]
    if head not in model.model_fields:
        return False
    annotation = model.model_fields[head].annotation
    if not rest:
        return True
    for candidate in _unwrap(annotation):
        if get_origin(candidate) is dict:
            # dict[str, Section]: the next part is a name of our choosing.
            _, value = get_args(candidate)
            if len(rest) == 1:
                continue
            if head == "providers" and rest[0] not in REGISTRY:
                return False
            for section in _unwrap(value):
                if isinstance(section, type) and issubclass(section, BaseModel):
                    if settings_key_exists(rest[1:], section):
                        return True
        elif isinstance(candidate, type) and issubclass(candidate, BaseModel):
            if settings_key_exists(rest, candidate):
                return True
    return False


def env_key_path(name: str) -> list[str]:
    assert name.startswith("RECEIVER_"), name
    return [part.lower() for part in name.removeprefix("RECEIVER_").split("__")]


def assert_receiver_env_is_real(environ: Mapping[str, str]) -> Settings:
    """Every RECEIVER_* variable names a Settings key, and together they validate."""
    for name in environ:
        if name.startswith("RECEIVER_"):
            assert settings_key_exists(env_key_path(name)), f"{name} is not a receiver setting"
    return load_settings(None, dict(environ))


def image_path(name: str) -> str:
    """Image name without registry/tag: ``chrislusf/seaweedfs:3.85`` -> ``seaweedfs``."""
    return name.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass
class Instruction:
    op: str
    args: str

    def json_args(self) -> list[str] | None:
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list)
            return [str(v) for v in value]
        return None

    def argv(self) -> list[str]:
        return self.json_args() or shlex.split(self.args)


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]

    def last(self, op: str) -> Instruction | None:
        found = self.all(op)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Stage]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments may sit between continued lines
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in lines:
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(image=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(Instruction(op, args.strip()))
        else:
            assert op in ("ARG",), f"{op} before the first FROM"
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def final_argv(stage: Stage) -> list[str]:
    entry = stage.last("ENTRYPOINT")
    cmd = stage.last("CMD")
    assert cmd is not None, "no CMD"
    return (entry.argv() if entry else []) + cmd.argv()


def exposed_port(stage: Stage) -> int:
    exposes = stage.all("EXPOSE")
    assert len(exposes) == 1, "expose exactly one port"
    return int(exposes[0].args.split("/")[0])


def parse_serve(argv: list[str]) -> Any:
    """Parse a container command with the real CLI parser; argparse exits on a bad flag."""
    assert argv[0] == "receiver", argv
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["receiver"] == "receiver.cli:main"
    try:
        return cli.parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"receiver rejects the command line {argv[1:]}")


def test_dockerfile_builds_a_wheel_in_one_stage_and_installs_it_in_a_slim_one(
    stages: list[Stage],
) -> None:
    assert len(stages) == 2
    build, final = stages
    assert build.image == final.image == "python:3.11-slim"
    assert build.name
    assert any("pip wheel" in run.args for run in build.all("RUN"))
    installs = [run.args for run in final.all("RUN") if "pip install" in run.args]
    assert len(installs) == 1
    # Offline, from the builder's wheels, which are mounted rather than copied into a layer.
    assert f"from={build.name}" in installs[0] and "--no-index" in installs[0]
    # Nothing from the source tree and no build tools in the final image.
    assert all("--from=" in copy.args for copy in final.all("COPY")), "source copied into final"
    for run in final.all("RUN"):
        assert not re.search(r"apt-get install|gcc|build-essential", run.args), run.args


def _dist_name(requirement: str) -> str:
    """``psycopg[binary]>=3.2.1`` → ``psycopg``, normalised as the index does."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def test_dockerfile_installs_exactly_the_locked_dependencies(stages: list[Stage]) -> None:
    """Reproducible images: every dependency comes from requirements.lock, pinned and hashed,
    and the lock covers everything the package and its [postgres] extra ask for."""
    build, final = stages
    assert any("requirements.lock" in c.args for c in build.all("COPY"))
    wheels = " ".join(run.args for run in build.all("RUN"))
    assert "--require-hashes -r requirements.lock" in wheels
    assert "--no-deps ." in wheels  # the project's wheel resolves nothing of its own
    [install] = [run.args for run in final.all("RUN") if "pip install" in run.args]
    assert "--require-hashes -r /wheels/requirements.lock" in install
    assert "--no-deps /wheels/flux_receiver-" in install

    lock = (ROOT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", lock, re.M))
    assert pins
    entries = re.split(r"\n(?=[a-z0-9])", lock.split("\n", 2)[2])
    for entry in entries:
        assert "--hash=sha256:" in entry, f"no hash for {entry.splitlines()[0]}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["postgres"]
    missing = {_dist_name(r) for r in wanted} - set(pins)
    assert not missing, f"requirements.lock lacks {sorted(missing)}: regenerate it"
    assert "--extra postgres" in lock.splitlines()[1]


def test_dockerfile_runs_as_a_non_root_user_it_creates(stages: list[Stage]) -> None:
    final = stages[-1]
    user = final.last("USER")
    assert user is not None, "no USER: the container would run as root"
    uid, _, gid = user.args.partition(":")
    assert uid not in ("root", "0") and gid not in ("root", "0")
    created = " ".join(run.args for run in final.all("RUN"))
    # The numeric id Kubernetes' runAsUser uses must be the one useradd made.
    assert re.search(rf"useradd\b.*--uid {uid}\b", created), f"uid {uid} not created"
    # USER comes after the installation, which needs root.
    ops = [i.op for i in final.instructions]
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")


def test_dockerfile_command_is_a_real_serve_invocation_on_the_exposed_port(
    stages: list[Stage],
) -> None:
    final = stages[-1]
    args = parse_serve(final_argv(final))
    assert args.func is cli.cmd_serve
    assert args.host == "0.0.0.0"
    assert args.port == exposed_port(final)
    assert not args.no_worker
    # Forwarded headers are always on in `serve`; which peers may send them is configuration.
    source = ast.unparse(ast.parse(Path(cli.__file__).read_text()))
    assert "proxy_headers=True" in source
    assert "forwarded_allow_ips=','.join(settings.server.trusted_proxies)" in source


def healthcheck_url(stage: Stage) -> tuple[str, list[str]]:
    check = stage.last("HEALTHCHECK")
    assert check is not None, "no HEALTHCHECK"
    _, _, command = check.args.partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "the slim image has no curl: use python"
    found = re.findall(r"https?://[^'\"]+", argv[2])
    assert len(found) == 1
    return found[0], argv


def test_dockerfile_healthcheck_probes_a_real_route_on_the_exposed_port(
    stages: list[Stage],
) -> None:
    url, _ = healthcheck_url(stages[-1])
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    assert parts.port == exposed_port(stages[-1])
    assert parts.path in get_routes()
    assert parts.path == "/healthz"


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match plus ``**``, as Docker applies them to .dockerignore lines."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _docker_pattern(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_else(stages: list[Stage]) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    copied: list[str] = []
    for stage in stages:
        for copy in stage.all("COPY"):
            if "--from=" not in copy.args:
                words = [w for w in copy.args.split() if not w.startswith("--")]
                copied.extend(words[:-1])
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        targets = [source]
        if (ROOT / source).is_dir():
            targets = [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
            targets += [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.sql")]
        for target in targets:
            assert not dockerignore_excludes(patterns, target), f"{target} is ignored"
    for stray in ("tests/unit/test_infra.py", ".git/HEAD", "receiver/__pycache__/x.pyc", ".env"):
        assert dockerignore_excludes(patterns, stray), f"{stray} would be sent to the build"


# --- compose ----------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            assert value, f"${{{name}}} is required but has no value in .env.example"
            return value
        assert value is not None, f"${{{name}}} has no value in .env.example"
        return value

    return _VAR.sub(one, text)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    env = read_env_file(COMPOSE_DIR / ".env.example")
    data: dict[str, Any] = yaml.safe_load(
        interpolate((COMPOSE_DIR / "compose.yaml").read_text(), env)
    )
    return data


def receiver_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("build", {}).get("context") == "../.."
    }


def test_compose_runs_nginx_two_replicas_postgres_and_an_s3_store(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = receiver_services(compose)
    assert len(replicas) == 2
    assert (
        COMPOSE_DIR / replicas[next(iter(replicas))]["build"]["context"] / "Dockerfile"
    ).exists()
    assert image_path(services["nginx"]["image"]) == "nginx"
    assert image_path(services["postgres"]["image"]) == "postgres"
    assert image_path(services["seaweedfs"]["image"]) in ("seaweedfs", "minio")
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_compose_receiver_environment_is_valid_configuration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    envs = [svc["environment"] for svc in receiver_services(compose).values()]
    assert envs[0] == envs[1], "replicas must share one configuration"
    settings = assert_receiver_env_is_real(envs[0])
    # The ledger is the PostgreSQL service, with the password it was given.
    ledger = urlsplit(settings.ledger_url)
    assert ledger.scheme == "postgresql" and ledger.hostname == "postgres"
    pg_env = services["postgres"]["environment"]
    assert ledger.password == pg_env["POSTGRES_PASSWORD"]
    assert ledger.username == pg_env["POSTGRES_USER"] and ledger.path == f"/{pg_env['POSTGRES_DB']}"
    # The archive goes to the S3 service, with the identity the store was configured with.
    dest = settings.destinations[settings.default_destination]
    assert dest.type == "s3"
    endpoint = urlsplit(dest.endpoint_url or "")
    assert endpoint.hostname in services
    store = services[endpoint.hostname]
    assert f"-s3.port={endpoint.port}" in store["command"]
    s3_conf = json.loads(compose["configs"][store["configs"][0]["source"]]["content"])
    (identity,) = s3_conf["identities"]
    (creds,) = identity["credentials"]
    assert (creds["accessKey"], creds["secretKey"]) == (dest.access_key_id, dest.secret_access_key)
    assert {a.split(":")[1] for a in identity["actions"]} == {dest.bucket}
    init = services["seaweedfs-init"]["command"][0]
    assert f"s3.bucket.create -name {dest.bucket}" in init


def test_compose_trusts_forwarded_headers_from_nginx_only(compose: dict[str, Any]) -> None:
    env = next(iter(receiver_services(compose).values()))["environment"]
    settings = load_settings(None, env)
    nginx_ip = compose["services"]["nginx"]["networks"]["backend"]["ipv4_address"]
    assert settings.server.trusted_proxies == [nginx_ip]
    subnet = compose["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(subnet)


def test_compose_gives_replicas_time_to_drain(compose: dict[str, Any]) -> None:
    for svc in receiver_services(compose).values():
        settings = load_settings(None, svc["environment"])
        grace = svc["stop_grace_period"]
        assert grace.endswith("s")
        # uvicorn's timeout_graceful_shutdown is shutdown_grace_seconds + 1.
        assert float(grace[:-1]) > settings.worker.shutdown_grace_seconds + 1


def nginx_conf() -> str:
    return (COMPOSE_DIR / "nginx.conf").read_text()


def test_nginx_balances_over_every_replica_on_the_served_port(
    compose: dict[str, Any], stages: list[Stage]
) -> None:
    conf = nginx_conf()
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S)
    assert upstream
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(2), re.M)
    port = parse_serve(final_argv(stages[-1])).port
    assert sorted(servers) == sorted((name, str(port)) for name in receiver_services(compose))
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    # nginx resolves those names once at start, so it waits for healthy replicas.
    deps = compose["services"]["nginx"]["depends_on"]
    assert {n for n, d in deps.items() if d["condition"] == "service_healthy"} == {
        n for n, _ in servers
    }
    volume = compose["services"]["nginx"]["volumes"][0]
    assert volume.startswith("./nginx.conf:/etc/nginx/nginx.conf")


def test_nginx_forwards_client_headers_and_accepts_the_apps_largest_body() -> None:
    conf = nginx_conf()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in conf
    assert "proxy_set_header X-Request-ID $receiver_request_id;" in conf  # see middleware.py
    size = re.search(r"client_max_body_size\s+(\d+)([kKmM]?);", conf)
    assert size
    factor = {"": 1, "k": 1024, "m": 1024 * 1024}[size.group(2).lower()]
    assert int(size.group(1)) * factor >= ServerSettings().max_body_bytes
    # The events route is streamed, not buffered.
    events = "/v1/tasks/{task_id}/events"
    assert events in get_routes()
    block = re.search(r"location ~ (\S+) \{(.*?)\}", conf, re.S)
    assert block and re.fullmatch(block.group(1), "/v1/tasks/abc123/events")
    assert "proxy_buffering off;" in block.group(2)


def _seconds(value: str) -> float:
    number = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert number, value
    return int(number.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[number.group(2)]


def test_nginx_drops_idle_upstream_connections_before_a_replica_closes_them() -> None:
    """nginx must not reuse a connection the replica is about to close: a POST sent on it is
    lost to a reset and not retried. So nginx's upstream idle timeout is the shorter one."""
    upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", nginx_conf(), re.S)
    assert upstream and re.search(r"^\s*keepalive\s+\d+;", upstream.group(1), re.M)
    idle = re.search(r"^\s*keepalive_timeout\s+(\w+);", upstream.group(1), re.M)
    assert idle, "set keepalive_timeout in the upstream block (nginx's default is 60 s)"
    assert _seconds(idle.group(1)) < ServerSettings().keepalive_seconds


# --- Terraform --------------------------------------------------------------------------------

# boto3 client method -> the IAM actions S3 authorises it with.
IAM_ACTIONS: dict[str, set[str]] = {
    "put_object": {"s3:PutObject"},
    "create_multipart_upload": {"s3:PutObject"},
    "upload_part": {"s3:PutObject"},
    "complete_multipart_upload": {"s3:PutObject"},
    "abort_multipart_upload": {"s3:AbortMultipartUpload"},
    "list_parts": {"s3:ListMultipartUploadParts"},
    "get_object": {"s3:GetObject"},
    # HeadObject is authorised as GetObject; a missing key answers 404 rather than 403 only to
    # a caller that may also list the bucket.
    "head_object": {"s3:GetObject", "s3:ListBucket"},
    "delete_object": {"s3:DeleteObject"},
    "list_objects_v2": {"s3:ListBucket"},
    "copy_object": {"s3:GetObject", "s3:PutObject"},
    "put_object_tagging": {"s3:PutObjectTagging"},
    # Local: no request to S3.
    "close": set(),
}
# Signing is local; the URL is authorised, when fetched, as the operation it names.
PRESIGN = "generate_presigned_url"


def s3_client_calls() -> set[str]:
    """Methods used on ``self.client`` in the S3 destination: direct calls and
    ``functools.partial(self.client.x, ...)``; presigned URLs count as the operation signed."""
    source = (ROOT / "receiver" / "destinations" / "s3.py").read_text()
    tree = ast.parse(source)
    methods: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "client"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            methods.add(node.attr)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == PRESIGN
        ):
            first = node.args[0]
            assert isinstance(first, ast.Constant) and isinstance(first.value, str)
            methods.add(first.value)
    methods.discard(PRESIGN)
    return methods


def hcl_block(text: str, header: str) -> str:
    """The body of the block whose header matches ``header`` (a regex), braces balanced."""
    match = re.search(header + r"\s*\{", text)
    assert match, f"no block {header}"
    depth, start = 1, match.end()
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    raise AssertionError(f"unbalanced block {header}")


def tf_text() -> str:
    return "\n".join(p.read_text() for p in sorted(TF_DIR.glob("*.tf")))


def test_s3_client_calls_found_in_the_source_are_the_expected_ones() -> None:
    calls = s3_client_calls()
    # Guards the extraction itself: these are in s3.py today, one of them through partial().
    assert {"put_object", "upload_part", "head_object", "get_object", "close"} <= calls
    unknown = calls - IAM_ACTIONS.keys()
    assert not unknown, f"add the IAM actions of {sorted(unknown)} to IAM_ACTIONS"


def test_terraform_policy_grants_exactly_the_actions_the_s3_destination_uses() -> None:
    needed = set().union(*(IAM_ACTIONS[m] for m in s3_client_calls()))
    policy = hcl_block(tf_text(), r'data\s+"aws_iam_policy_document"\s+"receiver"')
    granted = set(re.findall(r'"(s3:[A-Za-z*]+)"', policy))
    assert granted == needed
    # Objects only under the destination's prefix; listing only on the bucket itself.
    assert 'objects_arn = "${aws_s3_bucket.archive.arn}/${var.prefix}*"' in tf_text()
    assert "resources = [local.objects_arn]" in policy
    assert "*" not in "".join(re.findall(r'"s3:([^"]*)"', policy))


def test_terraform_bucket_is_private_encrypted_and_cleans_up_multipart_uploads() -> None:
    text = tf_text()
    block = hcl_block(text, r'resource\s+"aws_s3_bucket_public_access_block"\s+"archive"')
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert re.search(rf"{flag}\s*=\s*true", block), flag
    sse = hcl_block(
        text, r'resource\s+"aws_s3_bucket_server_side_encryption_configuration"\s+"archive"'
    )
    assert re.search(r'sse_algorithm\s*=.*"AES256".*"aws:kms"', sse)
    life = hcl_block(text, r'resource\s+"aws_s3_bucket_lifecycle_configuration"\s+"archive"')
    abort = hcl_block(life, r"abort_incomplete_multipart_upload")
    assert re.search(r"days_after_initiation\s*=\s*1\b", abort)
    expiry = hcl_block(life, r'dynamic\s+"rule"')
    assert "var.expire_after_days == null ? []" in expiry and "expiration" in expiry
    variables = hcl_block(text, r'variable\s+"expire_after_days"')
    assert re.search(r"default\s*=\s*null", variables), "expiry must be optional"
    tls = hcl_block(text, r'data\s+"aws_iam_policy_document"\s+"tls_only"')
    assert '"aws:SecureTransport"' in tls and '"Deny"' in tls


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_files_parse_and_are_formatted() -> None:
    # `fmt` parses HCL without providers; `validate` would need them downloaded.
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-no-color", str(TF_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc:
                assert doc["kind"] not in docs, f"two {doc['kind']}s"
                docs[doc["kind"]] = doc
    return docs


def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(only)


def container_port(k8s: dict[str, dict[str, Any]], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container(k8s)["ports"]}
    assert port in named, f"no container port named {port}"
    return int(named[port])


def pod_environment(k8s: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The container's environment, secrets filled from the example Secret."""
    spec = container(k8s)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref == k8s["ConfigMap"]["metadata"]["name"]
        env.update({k: str(v) for k, v in k8s["ConfigMap"]["data"].items()})
    secret = k8s["Secret"]
    for item in spec.get("env", []):
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"], f"Secret has no key {ref['key']}"
        env[item["name"]] = secret["stringData"][ref["key"]]
    return env


def test_k8s_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}


def test_k8s_environment_is_valid_configuration_with_secrets_from_the_secret(
    k8s: dict[str, dict[str, Any]],
) -> None:
    env = pod_environment(k8s)
    settings = assert_receiver_env_is_real(env)
    assert settings.ledger_url.startswith("postgresql://")
    from_secret = {
        item["name"] for item in container(k8s)["env"] if "secretKeyRef" in item["valueFrom"]
    }
    sensitive = {"RECEIVER_SECRET_KEYS", "RECEIVER_LEDGER_URL", "RECEIVER_API_KEYS"}
    sensitive |= {n for n in env if n.endswith(("_API_KEY", "__SECRET", "SECRET_ACCESS_KEY"))}
    assert sensitive <= from_secret
    assert not sensitive & set(k8s["ConfigMap"]["data"]), "a secret sits in the ConfigMap"


def test_k8s_deployment_command_probes_and_ports_match_the_app(
    k8s: dict[str, dict[str, Any]], stages: list[Stage]
) -> None:
    deployment = k8s["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    spec = container(k8s)
    entry = stages[-1].last("ENTRYPOINT")
    args = parse_serve((entry.argv() if entry else []) + spec["args"])
    assert args.func is cli.cmd_serve and args.host == "0.0.0.0"
    assert container_port(k8s, "http") == args.port
    probes = {
        kind: spec[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in get_routes()
        assert container_port(k8s, probe["port"]) == args.port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.port
    assert annotations["prometheus.io/path"] in get_routes()


def test_k8s_termination_grace_covers_the_pre_stop_pause_and_the_drain(
    k8s: dict[str, dict[str, Any]],
) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    command = container(k8s)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    settings = load_settings(None, pod_environment(k8s))
    drain = settings.worker.shutdown_grace_seconds + 1
    assert pod["terminationGracePeriodSeconds"] > pause + drain
    assert WorkerSettings().shutdown_grace_seconds == 20, "update the comments in deployment.yaml"


def test_k8s_pod_runs_as_the_images_user_with_a_read_only_root(
    k8s: dict[str, dict[str, Any]], stages: list[Stage]
) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    user = stages[-1].last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == (uid, gid)
    box = container(k8s)["securityContext"]
    assert box["readOnlyRootFilesystem"] is True and box["allowPrivilegeEscalation"] is False
    # Spooled downloads need a writable /tmp.
    assert "/tmp" in {m["mountPath"] for m in container(k8s)["volumeMounts"]}


def test_k8s_service_pdb_and_hpa_point_at_the_deployment(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = k8s["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert container_port(k8s, port["targetPort"]) == container_port(k8s, "http")
    pdb = k8s["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] <= hpa["maxReplicas"]
    # The HPA scales on CPU utilisation, a percentage of requests: these must be set.
    assert container(k8s)["resources"]["requests"]["cpu"]
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == (k8s["ServiceAccount"]["metadata"]["name"])
    )


def test_settings_key_walker_rejects_what_is_not_a_setting() -> None:
    """The walker the tests above rely on: real keys pass, near misses do not."""
    assert settings_key_exists(["destinations", "x", "bucket"])
    assert settings_key_exists(["server", "trusted_proxies"])
    assert settings_key_exists(["providers", "replicate", "api_key"])
    assert not settings_key_exists(["server", "trusted_proxy"])
    assert not settings_key_exists(["destinations", "x", "bukket"])
    assert not settings_key_exists(["providers", "nosuch", "api_key"])
    assert not settings_key_exists(["providers", "replicate", "apikey"])
    assert ProviderSettings.model_fields.keys() >= {"api_key"}


def test_k8s_image_tag_is_the_package_version(k8s: dict[str, dict[str, Any]]) -> None:
    """The one version source is receiver.__version__; the example deploys that release."""
    from receiver import __version__

    image = container(k8s)["image"]
    assert image.rsplit(":", 1)[1] == __version__, "bump infra/k8s/deployment.yaml's image tag"
