"""Static checks of deploy/: the image, compose, Kubernetes, Prometheus, Grafana.

Nothing here needs Docker, a cluster or the keysvc package. promtool (Debian's
prometheus package) checks the Prometheus files; kubernetes-validate checks the
manifests against the Kubernetes schemas it bundles, offline.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s_schema

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
BASE = DEPLOY / "k8s" / "base"
DASHBOARD = DEPLOY / "grafana" / "keysvc-dashboard.json"

# The metric families keysvc exports, each with its labels as Prometheus stores
# them. The scheduler's families label their job `task`, since Prometheus keeps
# `job` for the scrape target.
METRICS: dict[str, frozenset[str]] = {
    "keysvc_http_requests_total": frozenset({"route", "method", "status"}),
    "keysvc_http_request_duration_seconds": frozenset({"route", "method"}),
    "keysvc_jwks_cache_hits_total": frozenset(),
    "keysvc_jwks_cache_misses_total": frozenset(),
    "keysvc_rotations_total": frozenset({"trigger"}),
    "keysvc_revocations_total": frozenset(),
    "keysvc_keys": frozenset({"state"}),
    "keysvc_oldest_active_key_age_seconds": frozenset(),
    "keysvc_clients_rotation_overdue": frozenset(),
    "keysvc_verifications_total": frozenset({"outcome"}),
    "keysvc_remote_fetches_total": frozenset({"outcome"}),
    "keysvc_remote_sets_stale": frozenset(),
    "keysvc_remote_stale_served_total": frozenset(),
    "keysvc_scheduler_runs_total": frozenset({"task", "outcome"}),
    "keysvc_scheduler_run_duration_seconds": frozenset({"task"}),
    "keysvc_scheduler_last_success_timestamp_seconds": frozenset({"task"}),
    "keysvc_key_generation_duration_seconds": frozenset({"alg"}),
    "keysvc_assertions_signed_total": frozenset({"alg"}),
    "keysvc_ready": frozenset(),
    "keysvc_build_info": frozenset({"version"}),
}
HISTOGRAMS = frozenset(
    {
        "keysvc_http_request_duration_seconds",
        "keysvc_scheduler_run_duration_seconds",
        "keysvc_key_generation_duration_seconds",
    }
)
# Labels Prometheus attaches at scrape time: static configs give job and
# instance, the Prometheus Operator adds the rest.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
)
SCRAPE_JOB = "keysvc"

KEYSVC_VARIABLES = frozenset(
    {
        "KEYSVC_HOST",
        "KEYSVC_PORT",
        "KEYSVC_METRICS_PORT",
        "KEYSVC_DATABASE_URL",
        "KEYSVC_DATA_DIR",
        "KEYSVC_ADMIN_TOKEN",
        "KEYSVC_KEKS",
        "KEYSVC_SCHEDULER",
        "KEYSVC_SCHEDULER_INTERVAL",
        "KEYSVC_LOG_FORMAT",
        "KEYSVC_LOG_LEVEL",
        "KEYSVC_REMOTE_ALLOW",
        "KEYSVC_REMOTE_ALLOW_HTTP",
    }
)
SECRET_KEYS = {
    "KEYSVC_DATABASE_URL": "database-url",
    "KEYSVC_ADMIN_TOKEN": "admin-token",
    "KEYSVC_KEKS": "keks",
}
SECRET_NAME = "keysvc-secrets"
HTTP_PORT = 8080
METRICS_PORT = 9464
DRAIN_BOUND_SECONDS = 10
PLACEHOLDER = "replace-me"

ALERTS = frozenset(
    {
        "KeysvcRotationOverdue",
        "KeysvcRemoteJwksStale",
        "KeysvcHighErrorRate",
        "KeysvcScrapeDown",
        "KeysvcVerificationFailuresSpike",
        "KeysvcSchedulerStalled",
    }
)
PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com"
# The oldest Kubernetes release the manifests target, and the newest whose
# schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = tuple(dict.fromkeys(("1.30.0", k8s_schema.latest_version())))

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not on PATH (Debian: apt-get install prometheus)",
)


def kustomize_command() -> list[str] | None:
    """kustomize build, or kubectl's built-in copy of it, whichever is installed."""
    if standalone := shutil.which("kustomize"):
        return [standalone, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]

    return None


KUSTOMIZE = kustomize_command()

INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}")
SELECTOR = re.compile(r"\b(?P<name>[a-z_][a-z0-9_]*)\b\s*(?P<matchers>\{[^}]*\})?")
MATCHER = re.compile(
    r'(?P<label>[a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?P<value>[^"]*)"'
)
GROUPING = re.compile(r"\b(?:by|without)\s*\((?P<labels>[^)]*)\)")


# --- loading -----------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")

    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomization() -> dict[str, Any]:
    return load_yaml(BASE / "kustomization.yaml")


def base_resources() -> list[dict[str, Any]]:
    """The documents the kustomization deploys, read in Python."""
    documents = []
    for entry in kustomization()["resources"]:
        documents.extend(load_yaml_documents(BASE / entry))

    return documents


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        doc
        for doc in base_resources()
        if doc["kind"] == kind and name in (None, doc["metadata"]["name"])
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"

    return matches[0]


def kinds_and_names(documents: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((doc["kind"], doc["metadata"]["name"]) for doc in documents)


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        kind: resource(kind)["spec"]["template"]["spec"]
        for kind in ("Deployment", "Job")
    }


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")


def compose_services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def keysvc_compose_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose_services().items()
        if "Dockerfile" in str(service.get("build", {}).get("dockerfile", ""))
    }


def server_compose_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in keysvc_compose_services().items()
        if service.get("command") == ["serve"]
    }


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "compose.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value

    return values


def alert_groups() -> list[dict[str, Any]]:
    return load_yaml(PROMETHEUS / "alerts.yml")["groups"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in alert_groups() for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))

    return panels


def dashboard_expressions() -> list[tuple[str, str]]:
    return [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard_panels()
        if panel["type"] != "row"
        for target in panel.get("targets", [])
    ]


def promql_expressions() -> list[tuple[str, str]]:
    """Every PromQL expression of the alerts and the dashboard, with its origin."""
    alerts = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    variables = [
        (f"variable {variable['name']}", variable["definition"])
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "query"
    ]

    return alerts + dashboard_expressions() + variables


def metric_family(name: str) -> str | None:
    if name in METRICS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)

    return None


def keysvc_selectors(expr: str) -> Iterator[tuple[str, str]]:
    """The keysvc_* metric names in an expression, each with its {…} matchers."""
    for match in SELECTOR.finditer(expr):
        if match["name"].startswith("keysvc_"):
            yield match["name"], match["matchers"] or ""


def label_matchers(expr: str) -> Iterator[tuple[str, str, str]]:
    """(metric, label, value) for each label matcher on a keysvc_* metric."""
    for name, matchers in keysvc_selectors(expr):
        for matcher in MATCHER.finditer(matchers):
            yield name, matcher["label"], matcher["value"]


def known_labels(name: str) -> frozenset[str]:
    family = metric_family(name)
    if family is None:
        return frozenset()
    bucket = {"le"} if name.endswith("_bucket") else set()

    return METRICS[family] | TARGET_LABELS | bucket


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"

    return sum(float(number) * units[unit] for number, unit in parts)


def run_promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile --------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [args for word, args in self.instructions if word == keyword]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages, with continuation lines joined, comments dropped."""
    lines, pending = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        lines.append(pending + text)
        pending = ""

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        word, _, args = line.partition(" ")
        word, args = word.upper(), args.strip()
        if word == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], args.split()[0])
            alias = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stages.append(Stage(image, alias[1] if alias else str(len(stages))))
        else:
            stages[-1].instructions.append((word, args))

    return stages


def runtime_stage() -> Stage:
    return dockerfile_stages()[-1]


def image_uid() -> int:
    user = runtime_stage().arguments("USER")[-1]

    return int(user.split(":")[0])


def healthcheck_command() -> list[str]:
    (healthcheck,) = runtime_stage().arguments("HEALTHCHECK")
    _, _, exec_form = healthcheck.partition(" CMD ")

    return json.loads(exec_form)


def test_image_builds_in_a_builder_stage_and_runs_from_slim_python_3_11() -> None:
    stages = dockerfile_stages()

    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert re.fullmatch(r"python:3\.11-[a-z]+", stages[0].image)
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", runtime_stage().image)


def test_image_runtime_takes_only_the_virtual_environment_from_the_builder() -> None:
    copies = runtime_stage().arguments("COPY")

    assert copies == ["--from=builder /opt/keysvc /opt/keysvc"]


def test_image_runtime_installs_no_build_tools() -> None:
    build_tools = re.compile(
        r"\b(gcc|g\+\+|cc|clang|make|build-essential|[\w.-]+-dev|pip)\b"
    )
    runs = runtime_stage().arguments("RUN")

    offending = [run for run in runs if build_tools.search(run)]

    assert offending == []


def test_image_runs_as_a_fixed_non_root_uid() -> None:
    (user,) = runtime_stage().arguments("USER")
    created = " ".join(runtime_stage().arguments("RUN"))

    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "USER must be numeric uid:gid"
    assert f"--uid {image_uid()}" in created


def test_image_healthcheck_probes_healthz_with_the_standard_library() -> None:
    command = healthcheck_command()

    assert command[0] == "python"
    assert "/healthz" in " ".join(command)
    assert not re.search(r"\b(curl|wget)\b", " ".join(command))


class _HealthHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server

    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def run_healthcheck(port: int) -> int:
    command = [sys.executable, *healthcheck_command()[1:]]
    result = subprocess.run(
        command,
        env={"KEYSVC_PORT": str(port)},
        capture_output=True,
        timeout=10,
        check=False,
    )

    return result.returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_image_healthcheck_passes_only_on_a_2xx_healthz(
    health_server: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    healthy: bool,
) -> None:
    monkeypatch.setattr(_HealthHandler, "status", status)

    returncode = run_healthcheck(health_server.server_address[1])

    assert (returncode == 0) is healthy


def test_image_healthcheck_fails_when_nothing_listens(
    health_server: ThreadingHTTPServer,
) -> None:
    port = health_server.server_address[1]
    health_server.shutdown()
    health_server.server_close()

    assert run_healthcheck(port) != 0


def test_image_exposes_8080_and_runs_keysvc_serve() -> None:
    stage = runtime_stage()
    environment = " ".join(stage.arguments("ENV"))

    assert str(HTTP_PORT) in " ".join(stage.arguments("EXPOSE")).split()
    assert [json.loads(e) for e in stage.arguments("ENTRYPOINT")] == [["keysvc"]]
    assert [json.loads(c) for c in stage.arguments("CMD")] == [["serve"]]
    assert "KEYSVC_HOST=0.0.0.0" in environment.split()
    assert set(re.findall(r"\bKEYSVC_\w+", environment)) <= KEYSVC_VARIABLES


# --- compose -----------------------------------------------------------------


def test_compose_runs_postgres_a_migration_two_replicas_and_prometheus() -> None:
    services = compose_services()
    keysvc = keysvc_compose_services()

    assert services["postgres"]["image"] == "postgres:16"
    assert keysvc["migrate"]["command"] == ["migrate"]
    assert sorted(server_compose_services()) == ["keysvc-1", "keysvc-2"]
    assert "prometheus" in services
    assert set(compose()["volumes"]) >= {"pgdata"}
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_compose_dependencies_name_services_that_can_meet_their_condition() -> None:
    services = compose_services()

    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert services[target]["healthcheck"].get("test"), target
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", target
            else:
                assert condition == "service_started", condition


def test_compose_replicas_wait_for_a_successful_migration() -> None:
    for service in server_compose_services().values():
        conditions = {t: s["condition"] for t, s in service["depends_on"].items()}

        assert conditions["migrate"] == "service_completed_successfully"
        assert conditions["postgres"] == "service_healthy"


def test_compose_keysvc_services_read_only_known_variables() -> None:
    for name, service in keysvc_compose_services().items():
        assert set(service["environment"]) <= KEYSVC_VARIABLES, name
        assert set(SECRET_KEYS) <= set(service["environment"]), name


def test_compose_holds_no_literal_secret() -> None:
    dsn = re.compile(r"postgresql://(?P<user>[^:@/]+):(?P<password>.+)@[^@/]+/\w+")

    for name, service in compose_services().items():
        for variable, value in service.get("environment", {}).items():
            if variable == "KEYSVC_DATABASE_URL":
                match = dsn.fullmatch(value)
                assert match, f"{name}: unexpected DSN shape"
                assert INTERPOLATION.fullmatch(match["password"]), name
            elif re.search(r"PASSWORD|TOKEN|KEKS|SECRET", variable):
                assert INTERPOLATION.fullmatch(str(value)), f"{name}: {variable}"


def test_compose_env_example_gives_each_variable_a_placeholder() -> None:
    interpolated = {
        match["name"]
        for match in INTERPOLATION.finditer((DEPLOY / "compose.yaml").read_text())
    }
    example = env_example()

    assert set(example) == interpolated
    for name, value in example.items():
        assert PLACEHOLDER in value.lower(), name


def test_example_keks_cannot_be_used_as_they_are() -> None:
    example_keks = [
        env_example()["KEYSVC_KEKS"],
        load_yaml(BASE / "secret.example.yaml")["stringData"]["keks"],
    ]

    for keks in example_keks:
        for kek in keks.split(","):
            kek_id, _, material = kek.partition(":")
            assert kek_id and material
            try:
                decoded = base64.urlsafe_b64decode(
                    material + "=" * (-len(material) % 4)
                )
            except (binascii.Error, ValueError):
                continue
            assert len(decoded) != 32, "a placeholder KEK must not be a valid key"


def test_compose_database_role_is_the_database_owner_not_a_superuser() -> None:
    environment = keysvc_compose_services()["migrate"]["environment"]
    user = re.match(r"postgresql://([^:@/]+):", environment["KEYSVC_DATABASE_URL"])
    init = (DEPLOY / "postgres" / "initdb" / "10-keysvc.sh").read_text()

    volumes = compose_services()["postgres"]["volumes"]

    assert user and user[1] == "keysvc"
    assert "./postgres/initdb:/docker-entrypoint-initdb.d:ro" in volumes
    assert re.search(r"CREATE ROLE keysvc LOGIN NOSUPERUSER\b", init)
    assert "CREATE DATABASE keysvc OWNER keysvc;" in init


def test_compose_database_init_script_is_valid_shell() -> None:
    script = DEPLOY / "postgres" / "initdb" / "10-keysvc.sh"

    result = subprocess.run(
        ["/bin/sh", "-n", str(script)], capture_output=True, text=True, timeout=10
    )

    assert result.returncode == 0, result.stderr


def test_compose_replicas_stop_after_the_drain_bound() -> None:
    for name, service in server_compose_services().items():
        grace = duration_seconds(service["stop_grace_period"])

        assert grace > DRAIN_BOUND_SECONDS, name


def test_compose_prometheus_scrapes_every_replica_on_the_metrics_port() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == SCRAPE_JOB]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    servers = server_compose_services()

    assert targets == {f"{name}:{METRICS_PORT}" for name in servers}
    for service in servers.values():
        assert service["environment"]["KEYSVC_METRICS_PORT"] == str(METRICS_PORT)


def test_compose_prometheus_loads_the_config_and_rules_it_mounts() -> None:
    prometheus = compose_services()["prometheus"]
    config = load_yaml(PROMETHEUS / "prometheus.yml")

    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file(), rule_file


# --- Prometheus --------------------------------------------------------------


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    run_promtool("check", "rules", "alerts.yml")


@needs_promtool
def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    run_promtool("test", "rules", "alerts_test.yml")


@needs_promtool
def test_prometheus_config_and_its_rule_files_pass_promtool_check() -> None:
    run_promtool("check", "config", "prometheus.yml")


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    substitutions = {"$__rate_interval": "5m", "$instance": ".*"}
    rules = []
    for index, (_, expr) in enumerate(dashboard_expressions()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unsubstituted variable in {expr}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))

    run_promtool("check", "rules", str(path), cwd=tmp_path)


def test_alert_rules_define_exactly_the_keysvc_alerts() -> None:
    names = [rule["alert"] for rule in alert_rules()]

    assert sorted(names) == sorted(ALERTS)


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_alert_unit_tests_cover_each_alert_firing_and_staying_quiet() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")
    firing, quiet = set(), set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])

    assert tests["rule_files"] == ["alerts.yml"]
    assert firing == ALERTS
    assert quiet == ALERTS


def test_prometheus_rule_carries_exactly_the_alert_rules() -> None:
    prometheus_rule = resource("PrometheusRule")

    assert prometheus_rule["spec"]["groups"] == alert_groups()


def test_alerts_and_dashboard_use_only_keysvc_metric_families() -> None:
    unknown = [
        (origin, name)
        for origin, expr in promql_expressions()
        for name, _ in keysvc_selectors(expr)
        if metric_family(name) is None
    ]

    assert unknown == []


def test_alerts_and_dashboard_match_only_labels_their_metrics_carry() -> None:
    wrong = [
        (origin, name, label)
        for origin, expr in promql_expressions()
        for name, label, _ in label_matchers(expr)
        if label not in known_labels(name)
    ]

    assert wrong == []


def test_alerts_and_dashboard_select_only_the_keysvc_scrape_job() -> None:
    """keysvc exports no `job` label, so `job` always names the scrape target."""
    wrong = [
        (origin, name, value)
        for origin, expr in promql_expressions()
        for name, label, value in label_matchers(expr)
        if label == "job" and value != SCRAPE_JOB
    ]

    assert wrong == []


def test_alerts_and_dashboard_aggregate_only_by_known_labels() -> None:
    known = TARGET_LABELS | {"le"} | frozenset().union(*METRICS.values())
    wrong = [
        (origin, label.strip())
        for origin, expr in promql_expressions()
        for grouping in GROUPING.finditer(expr)
        for label in grouping["labels"].split(",")
        if label.strip() and label.strip() not in known
    ]

    assert wrong == []


def test_scrape_down_alert_watches_the_keysvc_job() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "KeysvcScrapeDown"]

    assert f'up{{job="{SCRAPE_JOB}"}}' in rule["expr"]


# --- Grafana -----------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]

    assert board["uid"] and board["title"]
    assert board["schemaVersion"] >= 39
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24


def test_every_dashboard_panel_has_a_query() -> None:
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        ref_ids = [target["refId"] for target in targets]

        assert targets, panel["title"]
        assert all(target["expr"].strip() for target in targets), panel["title"]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(
            target["datasource"]["uid"] == "${datasource}" for target in targets
        ), panel["title"]


def test_dashboard_shows_every_metric_family() -> None:
    shown = {
        metric_family(name)
        for _, expr in dashboard_expressions()
        for name, _ in keysvc_selectors(expr)
    }

    assert shown == set(METRICS)


# --- Kubernetes --------------------------------------------------------------


def test_kustomization_lists_every_manifest_in_base() -> None:
    manifests = {
        path.name
        for path in BASE.glob("*.yaml")
        if path.name != "kustomization.yaml" and not path.name.endswith(".example.yaml")
    }
    listed = kustomization()["resources"]

    assert sorted(listed) == sorted(manifests)
    assert len(listed) == len(set(listed))
    assert all((BASE / entry).is_file() for entry in listed)


def test_kustomization_is_namespace_agnostic() -> None:
    assert "namespace" not in kustomization()
    for doc in base_resources():
        assert "namespace" not in doc["metadata"], doc["kind"]


@pytest.mark.skipif(
    KUSTOMIZE is None, reason="neither kustomize nor kubectl is on PATH"
)
def test_kustomize_renders_every_listed_resource_and_pins_the_image() -> None:
    assert KUSTOMIZE is not None
    result = subprocess.run(
        [*KUSTOMIZE, str(BASE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr

    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (image,) = kustomization()["images"]
    pods = [d for d in rendered if d["kind"] in {"Deployment", "Job"}]

    assert kinds_and_names(rendered) == kinds_and_names(base_resources())
    for doc in pods:
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"keysvc:{image['newTag']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "manifest",
    sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"),
)
def test_kubernetes_manifest_matches_the_kubernetes_schema(
    manifest: str, version: str
) -> None:
    errors = []
    for doc in load_yaml_documents(BASE / manifest):
        if doc["apiVersion"].startswith(PROMETHEUS_OPERATOR_GROUP + "/"):
            pytest.skip(
                "kubernetes-validate bundles no schema for the Prometheus "
                "Operator's CRDs; test_prometheus_operator_resources_are_well_formed "
                "checks them"
            )
        try:
            k8s_schema.validate(doc, version, strict=True)
        except k8s_schema.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            errors.append(f"{doc['kind']} at {path or '.'}: {exc.message}")

    assert errors == []


def test_prometheus_operator_resources_are_well_formed() -> None:
    service = resource("Service")
    monitor = resource("ServiceMonitor")
    rule = resource("PrometheusRule")
    selector = monitor["spec"]["selector"]["matchLabels"]
    service_ports = {port["name"] for port in service["spec"]["ports"]}

    for doc in (monitor, rule):
        assert doc["apiVersion"] == f"{PROMETHEUS_OPERATOR_GROUP}/v1"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == SCRAPE_JOB
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
    assert set(rule["spec"]) == {"groups"}


def test_pods_run_unprivileged_as_the_image_user() -> None:
    for kind, spec in pod_specs().items():
        pod = spec["securityContext"]

        assert pod["runAsNonRoot"] is True, kind
        assert pod["runAsUser"] == image_uid(), kind
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, kind
        assert spec["automountServiceAccountToken"] is False, kind
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, kind
            assert context["readOnlyRootFilesystem"] is True, kind
            assert context["capabilities"]["drop"] == ["ALL"], kind


def test_pods_get_no_service_link_variables() -> None:
    """The Service named keysvc would otherwise inject KEYSVC_PORT=tcp://…."""
    for kind, spec in pod_specs().items():
        assert spec["enableServiceLinks"] is False, kind


def test_containers_read_known_variables_and_secrets_from_the_secret() -> None:
    for kind, spec in pod_specs().items():
        for container in spec["containers"]:
            env = {item["name"]: item for item in container["env"]}

            assert set(env) <= KEYSVC_VARIABLES, kind
            assert "envFrom" not in container, kind
            for variable, key in SECRET_KEYS.items():
                reference = env[variable]["valueFrom"]["secretKeyRef"]
                assert reference == {"name": SECRET_NAME, "key": key}, variable
                assert "value" not in env[variable], variable


def test_containers_request_and_limit_resources() -> None:
    for kind, spec in pod_specs().items():
        for container in spec["containers"]:
            resources = container["resources"]

            assert set(resources["requests"]) == {"cpu", "memory"}, kind
            assert set(resources["limits"]) == {"cpu", "memory"}, kind


def test_migration_job_runs_keysvc_migrate_once() -> None:
    job = resource("Job")
    spec = job["spec"]["template"]["spec"]

    assert spec["containers"][0]["args"] == ["migrate"]
    assert spec["restartPolicy"] in {"Never", "OnFailure"}
    assert job["spec"]["backoffLimit"] >= 1


def test_deployment_runs_three_spread_replicas_with_health_probes() -> None:
    deployment = resource("Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {item["name"]: item.get("value") for item in container["env"]}

    assert deployment["spec"]["replicas"] == 3
    assert container["args"] == ["serve"]
    assert ports == {"http": HTTP_PORT, "metrics": METRICS_PORT}
    assert env["KEYSVC_HOST"] == "0.0.0.0"
    assert env["KEYSVC_PORT"] == str(HTTP_PORT)
    assert env["KEYSVC_METRICS_PORT"] == str(METRICS_PORT)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert any(
        constraint["topologyKey"] == "kubernetes.io/hostname"
        for constraint in spec["topologySpreadConstraints"]
    )


def test_deployment_grace_period_covers_prestop_and_the_drain_bound() -> None:
    spec = resource("Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]

    assert pre_stop[0] == "sleep"
    assert (
        spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + DRAIN_BOUND_SECONDS
    )


def test_disruption_budget_keeps_two_of_the_replicas() -> None:
    budget = resource("PodDisruptionBudget")["spec"]
    pods = resource("Deployment")["spec"]["template"]["metadata"]["labels"]

    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 2
    assert budget["selector"]["matchLabels"].items() <= pods.items()


def test_service_exposes_http_and_metrics_of_the_server_pods_only() -> None:
    service = resource("Service")["spec"]
    server = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    migrate = resource("Job")["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"]: port["port"] for port in service["ports"]}

    assert ports == {"http": HTTP_PORT, "metrics": METRICS_PORT}
    assert service["selector"].items() <= server.items()
    assert not service["selector"].items() <= migrate.items()


def test_network_policy_admits_api_and_metrics_and_only_the_needed_egress() -> None:
    policy = resource("NetworkPolicy")["spec"]
    pods = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    ingress = {
        port["port"]: rule["from"]
        for rule in policy["ingress"]
        for port in rule["ports"]
    }
    egress = {
        (port["protocol"], port["port"])
        for rule in policy["egress"]
        for port in rule["ports"]
    }
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}

    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["podSelector"]["matchLabels"].items() <= pods.items()
    assert set(ingress) == {HTTP_PORT, METRICS_PORT}
    assert {"podSelector": {}} in ingress[HTTP_PORT]
    assert ingress[METRICS_PORT] == [{"namespaceSelector": {"matchLabels": monitoring}}]
    assert egress == {("TCP", 5432), ("UDP", 53), ("TCP", 53), ("TCP", 443)}


def test_example_secret_is_not_deployed_and_holds_only_placeholders() -> None:
    example = load_yaml(BASE / "secret.example.yaml")

    assert "secret.example.yaml" not in kustomization()["resources"]
    assert all(doc["kind"] != "Secret" for doc in base_resources())
    assert example["metadata"]["name"] == SECRET_NAME
    assert set(example["stringData"]) == set(SECRET_KEYS.values())
    for key, value in example["stringData"].items():
        assert PLACEHOLDER in value, key
