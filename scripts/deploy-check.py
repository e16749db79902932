#!/usr/bin/env python3
"""Offline validation of deploy/ and nats/server/ (`make deploy-check`, via deploy-check.sh).

Checks, each printed as one line:
  - every NATS server config parses (`nats-server -t`), and accounts.conf refuses to start
    without its passwords;
  - the Dockerfile passes hadolint;
  - both compose files pass `docker-compose config -q`, and fail without the .env passwords;
  - the Helm chart lints strictly and renders with its default values and with
    examples/production.yaml; `replicas: two` makes rendering and linting fail;
  - the rendered manifests pass `kubernetes-validate --strict`, yamllint, a ServiceMonitor
    check and the hardening every pod must have (non-root, read-only root, no capabilities);
  - yamllint on values, Chart.yaml, the example and the compose files (never templates/);
  - every service in apps/ (but the CLI) has a Deployment in the chart and a service in both
    compose files (the one other Deployment: the management API, `switchyard api serve`), and
    every config key the chart and compose set (SWITCHYARD_<SVC>_… variables, ConfigMap and
    mounted TOML files) exists in that service's config;
  - the Dockerfile builds and copies every binary the chart and compose run;
  - every password variable accounts.conf reads is given to the NATS servers of both compose
    files and set in example.env and in this script's NATS_ENV;
  - every repository path deploy/README.md names exists.
Ends with "N passed, N failed"; exits non-zero when anything failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / ".tools/deploy-check"
CHART = ROOT / "deploy/helm/switchyard"
COMPOSE_DIR = ROOT / "deploy/compose"
COMPOSE_FILES = ["compose.yaml", "compose.cluster.yaml"]
COMPOSE_ENV = COMPOSE_DIR / "example.env"
YAMLLINT_CONFIG = ROOT / "deploy/.yamllint.yaml"
KUBERNETES_VERSION = "1.37.0"
RELEASE, NAMESPACE = "switchyard", "switchyard"

# What deploy/README.md names that looks like a repository path but is not one: the .env made
# locally (never committed) and the official NATS chart's name.
README_NOT_IN_GIT = {"deploy/compose/.env", "nats/nats"}
# Passwords accounts.conf reads from the environment, and what the other server configs need.
NATS_ENV = {
    "SWITCHYARD_NATS_ADMIN_PASSWORD": "x",
    "SWITCHYARD_NATS_INGRESS_PASSWORD": "x",
    "SWITCHYARD_NATS_IDEMPOTENCY_PASSWORD": "x",
    "SWITCHYARD_NATS_BACKPRESSURE_PASSWORD": "x",
    "SWITCHYARD_NATS_EGRESS_PASSWORD": "x",
    "SWITCHYARD_NATS_DLQ_PASSWORD": "x",
    "SWITCHYARD_NATS_TENANT_ACME_PASSWORD": "x",
    "SWITCHYARD_NATS_TENANT_GLOBEX_PASSWORD": "x",
    "NATS_SERVER_NAME": "check",
}
# Unprefixed variables the config loader also reads (libs/runtime BUCKET_ENV_OVERRIDES).
BUCKET_ENV = {"JS_KV_NAMESPACE_IDEMPOTENCY", "JS_KV_NAMESPACE_BACKPRESSURE"}
# The management API: the CLI's binary (`switchyard api serve`, apps/cli/src/api/mod.rs), its
# chart component, and the one variable it reads outside the CLI's config (the operator token).
API_COMPONENT = "api"
API_COMMAND = ["switchyard", "api", "serve"]
API_ENV = {"SWITCHYARD_API_OPERATOR_TOKEN"}
# Shared config sections and the Rust structs that define them.
SHARED_SECTIONS = {
    "nats": ("libs/runtime/src/config/sections.rs", "NatsConfig"),
    "telemetry": ("libs/runtime/src/config/sections.rs", "TelemetryConfig"),
    "deployment": ("libs/topology/src/deployment.rs", "DeploymentConfig"),
}


class Failed(Exception):
    """A check's failure, with what is wrong."""


class Report:
    """Runs checks and prints one line each."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, fn, *args) -> object:
        started = time.monotonic()
        try:
            result = fn(*args)
        except Exception as e:  # a crash in a check is that check's failure, not the run's
            self.failed += 1
            detail = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
            print(f"FAIL  {name}\n      " + detail.replace("\n", "\n      "), flush=True)
            return None
        self.passed += 1
        print(f"ok    {name} ({time.monotonic() - started:.1f}s)", flush=True)
        return result


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs a command from the repository root with a small, predictable environment."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(cmd, cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True)


def must(proc: subprocess.CompletedProcess, what: str) -> str:
    if proc.returncode != 0:
        raise Failed(f"{what} exited {proc.returncode}:\n{(proc.stdout + proc.stderr).strip()}")
    return proc.stdout


# ---- NATS server configs --------------------------------------------------------------------

def nats_configs() -> None:
    server = ROOT / ".tools/bin/nats-server"
    problems = []
    for conf in sorted((ROOT / "nats/server").glob("*.conf")):
        proc = run([str(server), "-c", str(conf), "-t"], NATS_ENV)
        if proc.returncode != 0:
            problems.append(f"{conf.relative_to(ROOT)}: {(proc.stdout + proc.stderr).strip()}")
    if problems:
        raise Failed("\n".join(problems))


def nats_needs_passwords() -> None:
    env = {k: v for k, v in NATS_ENV.items() if k != "SWITCHYARD_NATS_EGRESS_PASSWORD"}
    proc = run([str(ROOT / ".tools/bin/nats-server"), "-c", "nats/server/single-auth.conf", "-t"], env)
    if proc.returncode == 0 or "SWITCHYARD_NATS_EGRESS_PASSWORD" not in proc.stdout + proc.stderr:
        raise Failed("single-auth.conf started without SWITCHYARD_NATS_EGRESS_PASSWORD")


# ---- Dockerfile, compose, yamllint ----------------------------------------------------------

def hadolint() -> None:
    must(run([str(BIN / "hadolint"), "--failure-threshold", "style", "deploy/docker/Dockerfile"]), "hadolint")


def compose_config(file: str) -> dict:
    path = f"deploy/compose/{file}"
    compose = str(BIN / "docker-compose")
    must(run([compose, "--env-file", str(COMPOSE_ENV), "-f", path, "config", "-q"]), "docker-compose config -q")
    for profile in ([], ["--profile", "observability"]):
        out = must(run([compose, "--env-file", str(COMPOSE_ENV), "-f", path, *profile, "config", "--format", "json"]),
                   "docker-compose config")
    return json.loads(out)


def compose_needs_env(file: str) -> None:
    proc = run([str(BIN / "docker-compose"), "--env-file", "/dev/null", "-f", f"deploy/compose/{file}", "config", "-q"])
    if proc.returncode == 0:
        raise Failed(f"{file} is valid without .env: a password has a default")


def yamllint(paths: list[Path], config: Path) -> None:
    must(run([str(BIN / "yamllint"), "-s", "-c", str(config), *map(str, paths)]), "yamllint")


# ---- Helm -----------------------------------------------------------------------------------

def load_values(path: Path | None) -> dict | None:
    return None if path is None else helm.values_from_yaml(path.read_text())


def helm_lint(values: dict | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    if bad or report["errors"]:
        raise Failed("\n".join(f"{m['path']}: {m['error'].strip()}" for m in bad) or "\n".join(report["errors"]))


def helm_render(name: str, values: dict | None) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        try:
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as e:
            raise Failed(str(e)) from e
    texts = [text.strip("\n") for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt") and text.strip()]
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"rendered-{name}.yaml"
    out.write_text("\n".join(t if t.startswith("---") else "---\n" + t for t in texts) + "\n")
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    if not docs:
        raise Failed("nothing rendered")
    return docs


def helm_refuses(values_yaml: str) -> None:
    values = helm.values_from_yaml(values_yaml)
    with helm.Chart.load(str(CHART)) as chart:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmValuesError as e:
            if "replicas" not in str(e):
                raise Failed(f"refused, but not for replicas: {e}") from e
        else:
            raise Failed(f"rendered with {values_yaml.strip()!r}")
    report = helm.lint(str(CHART), values, strict=True)
    if not report["errors"]:
        raise Failed("helm lint accepted it")


def kubernetes_validate(name: str) -> None:
    proc = run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION,
                str(OUT / f"rendered-{name}.yaml")])
    output = (proc.stdout + proc.stderr).strip()
    unknown = [line for line in output.splitlines() if "Couldn't find schema" in line and "ServiceMonitor" not in line]
    if proc.returncode != 0 or unknown:
        raise Failed(output)


def pod_specs(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def hardening(docs: list[dict]) -> None:
    problems = []
    for doc, pod in pod_specs(docs):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service account token")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}/{c['name']}: root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}/{c['name']}: privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}/{c['name']}: capabilities not dropped")
            if "memory" not in c.get("resources", {}).get("limits", {}):
                problems.append(f"{where}/{c['name']}: no memory limit")
            if doc["kind"] == "Deployment":
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problems.append(f"{where}/{c['name']}: no {probe}")
    kinds = {d["kind"] for d in docs}
    for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Job"):
        if kind not in kinds:
            problems.append(f"no {kind} rendered")
    jobs = [d for d in docs if d["kind"] == "Job"]
    for job in jobs:
        hooks = job["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        if hooks != "pre-install,pre-upgrade":
            problems.append(f"Job/{job['metadata']['name']}: hooks are {hooks!r}")
    if problems:
        raise Failed("\n".join(problems))


def service_monitors(docs: list[dict], expected: bool) -> None:
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    if expected and not monitors:
        raise Failed("serviceMonitor.enabled but no ServiceMonitor rendered")
    services = [d for d in docs if d["kind"] == "Service"]
    problems = []
    for m in monitors:
        if m["apiVersion"] != "monitoring.coreos.com/v1":
            problems.append(f"{m['metadata']['name']}: apiVersion {m['apiVersion']}")
        selector = m["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        if len(matched) != 1:
            problems.append(f"{m['metadata']['name']}: selects {len(matched)} Services")
            continue
        ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in m["spec"]["endpoints"]:
            if endpoint["port"] not in ports or endpoint.get("path") != "/metrics":
                problems.append(f"{m['metadata']['name']}: endpoint {endpoint}")
    if problems:
        raise Failed("\n".join(problems))


# ---- apps/ against the chart and compose ----------------------------------------------------

def apps() -> dict[str, str]:
    """Service name -> binary name, for every app with a binary except the CLI."""
    found = {}
    for manifest in sorted((ROOT / "apps").glob("*/Cargo.toml")):
        name = manifest.parent.name
        match = re.search(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', manifest.read_text())
        if name != "cli" and match:
            found[name] = match.group(1)
    return found


def coverage(chart_docs: list[dict], composes: dict[str, dict]) -> None:
    services = apps()
    deployed = {}
    for doc in chart_docs:
        if doc["kind"] == "Deployment":
            component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            deployed[component] = doc["spec"]["template"]["spec"]["containers"][0]["command"][0]
    problems = []
    for name, binary in services.items():
        places = []
        if deployed.get(name) != binary:
            places.append(f"a chart Deployment running {binary} (found {deployed.get(name)})")
        for file, compose in composes.items():
            command = (compose["services"].get(name) or {}).get("command") or [None]
            if command[0] != binary:
                places.append(f"a service {name} running {binary} in {file}")
        if places:
            problems.append(f"apps/{name} lacks " + "; ".join(places))
    for name in deployed:
        if name == API_COMPONENT:
            continue
        if name not in services:
            problems.append(f"the chart deploys {name}, which is not in apps/")

    for file, compose in composes.items():
        for name, svc in compose["services"].items():
            binary = (svc.get("command") or [""])[0]
            if binary.startswith("switchyard-") and binary != "switchyard-demo-sink" and binary not in services.values():
                problems.append(f"{file}: {name} runs {binary}, which no app in apps/ builds")
    if problems:
        raise Failed("\n".join(problems))


def binaries() -> dict[str, str]:
    """Binary name -> its Cargo package, for every package in apps/ and crates/."""
    found = {}
    for manifest in sorted([*(ROOT / "apps").glob("*/Cargo.toml"), *(ROOT / "crates").glob("*/Cargo.toml")]):
        text = manifest.read_text()
        package = re.search(r'\[package\]\s*name\s*=\s*"([^"]+)"', text)
        if not package:
            continue
        bins = re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', text)
        if not bins and (manifest.parent / "src/main.rs").exists():
            bins = [package.group(1)]
        for name in bins:
            found[name] = package.group(1)
    return found


def image_binaries(chart_sets: dict[str, list[dict]], composes: dict[str, dict]) -> None:
    """The image (deploy/docker/Dockerfile) builds and copies every binary the chart and compose run."""
    known = binaries()
    run_by: dict[str, str] = {}
    for values_name, docs in chart_sets.items():
        for doc, pod in pod_specs(docs):
            for c in pod["containers"]:
                command = c.get("command") or []
                if command:
                    run_by.setdefault(command[0], f"chart ({values_name}) {doc['kind']}/{doc['metadata']['name']}")
    for file, compose in composes.items():
        for name, svc in compose["services"].items():
            command = svc.get("command") or []
            if command and command[0] == "bash":  # a shell running the CLI
                command = ["switchyard"] if "switchyard " in " ".join(command) else []
            if command:
                run_by.setdefault(command[0], f"{file} {name}")
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    problems = []
    for binary, where in sorted(run_by.items()):
        if binary not in known:
            continue  # not ours (nats-server, the observability images)
        package = known[binary]
        if not re.search(rf"-p\s+{re.escape(package)}(\s|\\|$)", dockerfile):
            problems.append(f"{where} runs {binary}, but the Dockerfile does not build package {package} (-p)")
        if not re.search(rf"target/release/{re.escape(binary)}(\s|\\|$)", dockerfile):
            problems.append(f"{where} runs {binary}, but the Dockerfile does not copy target/release/{binary}")
    if problems:
        raise Failed("\n".join(problems))


def nats_passwords(composes: dict[str, dict]) -> None:
    """Every password variable accounts.conf reads reaches the NATS servers and example.env."""
    wanted = set(re.findall(r"password:\s*\$(\w+)", (ROOT / "nats/server/accounts.conf").read_text()))
    if not wanted:
        raise Failed("accounts.conf reads no password variables")
    problems = []
    example = set(re.findall(r"^(\w+)=", COMPOSE_ENV.read_text(), re.M))
    for name in sorted(wanted - example):
        problems.append(f"{COMPOSE_ENV.relative_to(ROOT)} does not set {name}")
    for name in sorted(wanted - NATS_ENV.keys()):
        problems.append(f"scripts/deploy-check.py NATS_ENV does not set {name}")
    for file, compose in composes.items():
        servers = {n: s for n, s in compose["services"].items() if str(s.get("image", "")).startswith("nats:")}
        if not servers:
            problems.append(f"{file}: no NATS server service")
        for name, svc in servers.items():
            for variable in sorted(wanted - (svc.get("environment") or {}).keys()):
                problems.append(f"{file} {name}: {variable} is not passed to the server")
    if problems:
        raise Failed("\n".join(problems))


def struct_fields(path: str, struct: str) -> set[str]:
    text = (ROOT / path).read_text()
    body = re.search(r"pub struct " + struct + r"\s*\{(.*?)\n\}", text, re.S)
    if not body:
        raise Failed(f"struct {struct} not found in {path}")
    return set(re.findall(r"^\s*pub (\w+):", body.group(1), re.M))


def known_keys(component: str) -> tuple[dict[str, set[str]], dict[str, object]]:
    """Section -> keys a component's config accepts, and the default value of each active key."""
    defaults_path = ROOT / "apps" / component / "config/defaults.toml"
    text = defaults_path.read_text()
    defaults = tomllib.loads(text)
    keys: dict[str, set[str]] = {}
    values: dict[str, object] = {}
    for section, table in defaults.items():
        if isinstance(table, dict):
            for key, value in table.items():
                keys.setdefault(section, set()).add(key)
                values[f"{section}.{key}"] = value
    section = None
    for line in text.splitlines():  # documented but commented-out keys
        header = re.match(r"\s*#?\s*\[([a-z_.-]+)\]", line)
        if header:
            section = header.group(1)
            continue
        comment = re.match(r"\s*#\s*([a-z_]+)\s*=", line)
        listed = re.match(r"\s*#\s*([a-z_, ]+):\s*unset", line)
        if section and comment:
            keys.setdefault(section, set()).add(comment.group(1))
        if section and listed:
            keys.setdefault(section, set()).update(k.strip() for k in listed.group(1).split(","))
    for section, (path, struct) in SHARED_SECTIONS.items():
        keys.setdefault(section, set()).update(struct_fields(path, struct))
    return keys, values


def key_problem(component: str, dotted: str, value: object | None = None) -> str | None:
    keys, defaults = known_keys(component)
    parts = dotted.split(".")
    config = f"apps/{component}/config/defaults.toml"
    if parts[0] not in keys:
        return f"[{parts[0]}] is not a section of {config}"
    if len(parts) == 3 and parts[:2] == ["deployment", "buckets"]:
        return None
    if len(parts) != 2 or parts[1] not in keys[parts[0]]:
        return f"{dotted} is not a key of {config} (nor of its shared sections)"
    default = defaults.get(dotted)
    if value is not None and default is not None:
        kind = lambda v: "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
        if kind(value) != kind(default):
            return f"{dotted} = {value!r} is a {kind(value)}; {config} has a {kind(default)}"
    return None


def flatten(table: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def env_problems(where: str, component: str, env_names: list[str]) -> list[str]:
    prefix = f"SWITCHYARD_{component.upper()}_"
    problems = []
    for name in env_names:
        if name in BUCKET_ENV or not name.startswith("SWITCHYARD_"):
            continue
        if component == "cli" and name in API_ENV:
            continue
        if not name.startswith(prefix):
            problems.append(f"{where}: {name} is not read by {component} (its prefix is {prefix})")
            continue
        dotted = ".".join(part.lower() for part in name[len(prefix):].split("__"))
        problem = key_problem(component, dotted)
        if problem:
            problems.append(f"{where}: {name}: {problem}")
    return problems


def toml_problems(where: str, component: str, table: dict) -> list[str]:
    problems = []
    for dotted, value in flatten(table).items():
        problem = key_problem(component, dotted, value)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def component_of(command: list[str], services: dict[str, str]) -> str | None:
    binary = command[0] if command else ""
    for name, service_binary in services.items():
        if binary == service_binary:
            return name
    if binary == "switchyard" or (binary == "bash" and "switchyard " in " ".join(command)):
        return "cli"
    return None


def config_keys(chart_sets: dict[str, list[dict]], composes: dict[str, dict]) -> None:
    services = apps()
    problems = []
    checked = 0
    for values_name, docs in chart_sets.items():
        for doc in docs:
            kind, name = doc["kind"], doc["metadata"]["name"]
            if kind == "ConfigMap" and "config.toml" in doc.get("data", {}):
                component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
                table = tomllib.loads(doc["data"]["config.toml"])
                problems += toml_problems(f"chart ({values_name}) ConfigMap/{name}", component, table)
                checked += 1
            for _, pod in pod_specs([doc]) if kind in ("Deployment", "Job") else []:
                for c in pod["containers"]:
                    component = component_of(c.get("command", []), services)
                    if component:
                        names = [e["name"] for e in c.get("env", [])]
                        problems += env_problems(f"chart ({values_name}) {kind}/{name}", component, names)
                        checked += 1
    for file, compose in composes.items():
        for name, svc in compose["services"].items():
            component = component_of(svc.get("command") or [], services)
            if not component:
                continue
            problems += env_problems(f"{file} {name}", component, list((svc.get("environment") or {}).keys()))
            command = svc.get("command") or []
            if "--config" in command:
                target = command[command.index("--config") + 1]
                mounts = [v for v in svc.get("volumes", []) if v.get("target") == target]
                if len(mounts) != 1:
                    problems.append(f"{file} {name}: --config {target} is not a mounted file")
                    continue
                source = Path(mounts[0]["source"])
                problems += toml_problems(f"{file} {name} ({source.relative_to(ROOT)})", component,
                                          tomllib.loads(source.read_text()))
            checked += 1
    if problems:
        raise Failed("\n".join(problems))
    if checked == 0:
        raise Failed("no config found to check")


def chart_ports(docs: list[dict]) -> None:
    """Container ports match the defaults (http.listen; ingress's documented probes_listen),
    and the probes ask the port the probes answer on."""
    problems = []
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        container = doc["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if component == API_COMPONENT:
            # Configured by flags: its port is the one --listen names; probes answer on it.
            command = container["command"]
            if command[:3] != API_COMMAND:
                problems.append(f"api: the Deployment runs {command[:3]}, not {API_COMMAND}")
            listen = command[command.index("--listen") + 1] if "--listen" in command else ""
            if not listen.endswith(f":{ports['http']}"):
                problems.append(f"api: chart port {ports['http']}, --listen {listen or 'missing'}")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port != "http":
                    problems.append(f"api: {probe} asks port {port}, the probes answer on http")
            continue
        text = (ROOT / "apps" / component / "config/defaults.toml").read_text()
        default = tomllib.loads(text)["http"]["listen"]
        if not default.endswith(f":{ports['http']}"):
            problems.append(f"{component}: chart port {ports['http']}, default http.listen {default}")
        if "probes" in ports:
            documented = re.search(r'^#\s*probes_listen\s*=\s*"([^"]+)"', text, re.M)
            if not documented or not documented.group(1).endswith(f":{ports['probes']}"):
                problems.append(f"{component}: chart probes port {ports['probes']}, documented default "
                                f"http.probes_listen {documented.group(1) if documented else 'none'}")
        want = "probes" if "probes" in ports else "http"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            if port != want:
                problems.append(f"{component}: {probe} asks port {port}, the probes answer on {want}")
    if problems:
        raise Failed("\n".join(problems))


def readme_paths() -> None:
    text = (ROOT / "deploy/README.md").read_text()
    named = {p.rstrip(".,:;)") for p in re.findall(r"(?<![\w/.-])((?:deploy|nats|scripts|apps|tests)/[\w./*<>-]+)", text)}
    missing = sorted(p for p in named - README_NOT_IN_GIT if not re.search(r"[*<>]", p) and not (ROOT / p).exists())
    if missing:
        raise Failed("deploy/README.md names paths that do not exist: " + ", ".join(missing))


# ---- main -----------------------------------------------------------------------------------

def main() -> int:
    started = time.monotonic()
    report = Report()
    report.check("nats-server -t on every nats/server/*.conf", nats_configs)
    report.check("accounts.conf refuses to start without its passwords", nats_needs_passwords)
    report.check("hadolint deploy/docker/Dockerfile", hadolint)
    composes = {}
    for file in COMPOSE_FILES:
        composes[file] = report.check(f"docker-compose config -q: {file}", compose_config, file)
        report.check(f"{file} needs the .env passwords", compose_needs_env, file)
    composes = {k: v for k, v in composes.items() if v}
    report.check("yamllint values, Chart.yaml, examples, compose files", yamllint,
                 [CHART / "Chart.yaml", CHART / "values.yaml", *sorted((CHART / "examples").glob("*.yaml")),
                  *sorted(COMPOSE_DIR.glob("*.yaml")), *sorted((COMPOSE_DIR / "observability").glob("*.y*ml"))],
                 YAMLLINT_CONFIG)
    chart_sets = {}
    for name, path in (("default", None), ("production", CHART / "examples/production.yaml")):
        values = load_values(path)
        label = "default values" if path is None else str(path.relative_to(ROOT))
        report.check(f"helm lint --strict ({label})", helm_lint, values)
        docs = report.check(f"helm render ({label})", helm_render, name, values)
        if docs is None:
            continue
        chart_sets[name] = docs
        rendered = OUT / f"rendered-{name}.yaml"
        report.check(f"kubernetes-validate --strict ({label})", kubernetes_validate, name)
        report.check(f"yamllint rendered manifests ({label})", yamllint, [rendered], ROOT / "deploy/.yamllint-rendered.yaml")
        report.check(f"pod hardening, probes, limits, hooks ({label})", hardening, docs)
        report.check(f"ServiceMonitors select a Service's metrics port ({label})", service_monitors, docs,
                     bool((values or {}).get("serviceMonitor", {}).get("enabled")))
        report.check(f"service ports match the http listen defaults, probes their port ({label})", chart_ports, docs)
    report.check("services.ingress.replicas: two fails rendering and lint", helm_refuses,
                 "services:\n  ingress:\n    replicas: two\n")
    if "default" in chart_sets and composes:
        report.check("every app in apps/ has a chart Deployment and a service in each compose file",
                     coverage, chart_sets["default"], composes)
        report.check("every config key the chart and compose set exists in the service's config",
                     config_keys, chart_sets, composes)
        report.check("the Dockerfile builds and copies every binary the chart and compose run",
                     image_binaries, chart_sets, composes)
    if composes:
        report.check("accounts.conf's password variables reach the NATS servers and example.env",
                     nats_passwords, composes)
    report.check("every path deploy/README.md names exists", readme_paths)
    print(f"deploy-check took {time.monotonic() - started:.0f}s; rendered manifests in {OUT.relative_to(ROOT)}/")
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
