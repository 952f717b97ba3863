"""Consistency checks of the deployment files that no schema expresses.

scripts/check-deploy runs each subcommand with the Python of its tool environment, after the
schema validators. Every problem is printed as `FILE: message`, and the exit code is 1 when
there is any. Subcommands and what they check:

    env-names FILE...                WEBHOOK_BRIDGE__* names and values against the settings
    compose COMPOSE NGINX            services, dependencies, profiles and the load balancer
    kubernetes BUILD OVERLAY         the rendered manifests of one overlay, or of "base"
    split BUILD REST MONITORS        writes ServiceMonitors and other kinds to two files
    dashboard JSON README            panels and PromQL against the metrics contract
"""

import base64
import json
import re
import sys
import tomllib
from pathlib import Path

import promql_parser
import yaml

REPO = Path(__file__).resolve().parent.parent
ENV_PREFIX = "WEBHOOK_BRIDGE__"
ENV_NAME = re.compile(r"\bWEBHOOK_BRIDGE__[A-Z0-9_]+")

# Settings whose value is one of a fixed set (BrokerKind and OnUnavailable in src/config).
SETTING_CHOICES = {
    ("broker", "kind"): {"rabbitmq", "kafka"},
    ("redis", "on_unavailable"): {"reject", "publish"},
    ("log", "format"): {"text", "json"},
}

# Time the bridge takes to close the broker connection after the HTTP server stopped. It is 5 s
# for RabbitMQ (RABBITMQ_CLOSE_TIMEOUT in src/startup.rs) and kafka.flush_timeout_ms for Kafka.
RABBITMQ_CLOSE_SECS = 5

# The metrics contract: name -> (type, label names). README's Metrics section, once it exists,
# must name every one of them.
METRICS = {
    "webhook_bridge_requests_total": ("counter", {"outcome", "reason"}),
    "webhook_bridge_request_duration_seconds": ("histogram", {"outcome"}),
    "webhook_bridge_requests_in_flight": ("gauge", set()),
    "webhook_bridge_events_published_total": ("counter", {"broker", "event_type"}),
    "webhook_bridge_publish_duration_seconds": ("histogram", {"broker"}),
    "webhook_bridge_publish_failures_total": ("counter", {"broker", "reason"}),
    "webhook_bridge_dedup_errors_total": ("counter", {"operation"}),
    "webhook_bridge_broker_up": ("gauge", {"broker"}),
    "webhook_bridge_redis_up": ("gauge", set()),
    "webhook_bridge_build_info": ("gauge", {"version"}),
}
LABEL_VALUES = {
    "outcome": {"accepted", "duplicate", "rejected", "unavailable"},
    "broker": {"rabbitmq", "kafka"},
    "event_type": {"task.completed", "task.failed"},
    "operation": {"claim", "release", "mark_done"},
}
# Publish failure reasons form a fixed set, but request reasons are the open set of error
# codes.
PUBLISH_FAILURE_REASONS = {"not_connected", "timeout", "nacked", "unroutable", "rejected",
                           "broker_error"}
# Labels that Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

problems = []


def report(path, message):
    problems.append(f"{path}: {message}")


def finish():
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def load_settings():
    """Loads config/example.toml, which lists every setting with its default."""
    with open(REPO / "config" / "example.toml", "rb") as file:
        return tomllib.load(file)


def check_env_variable(path, name, value, settings):
    """Checks that `name` maps to a setting and, when `value` is given, that it has its type."""
    parts = name[len(ENV_PREFIX):].lower().split("__")
    if len(parts) < 2 or parts[0] not in settings:
        report(path, f"{name} names no setting of config/example.toml")
        return

    section, key = parts[0], parts[1]
    if section == "kafka" and key == "options":
        # Any librdkafka property, with _ for each dot in its name.
        if len(parts) != 3 or not re.fullmatch(r"[a-z][a-z0-9_]*", parts[2]):
            report(path, f"{name} is not WEBHOOK_BRIDGE__KAFKA__OPTIONS__<PROPERTY>")
        return
    if len(parts) != 2 or key not in settings[section]:
        report(path, f"{name} names no key of [{section}] in config/example.toml")
        return

    default = settings[section][key]
    choices = SETTING_CHOICES.get((section, key))
    if value is None or "${" in value:
        return
    if choices and value not in choices:
        report(path, f"{name}={value}: expected one of {', '.join(sorted(choices))}")
    elif isinstance(default, bool):
        if value not in ("true", "false"):
            report(path, f"{name}={value}: expected true or false")
    elif isinstance(default, int) and not re.fullmatch(r"[0-9]+", value):
        report(path, f"{name}={value}: expected a whole number")


def env_assignments(path):
    """Yields (name, value) for each line of an env file, commented-out examples included."""
    for line in Path(path).read_text().splitlines():
        match = re.fullmatch(r"#?\s*(WEBHOOK_BRIDGE__[A-Z0-9_]+)=(.*)", line.strip())
        if match:
            yield match.group(1), match.group(2)


def cmd_env_names(paths):
    settings = load_settings()
    for path in paths:
        text = Path(path).read_text()
        names = set(ENV_NAME.findall(text))
        if path.endswith((".env", ".env.example")):
            assigned = dict(env_assignments(path))
            for name in sorted(names):
                check_env_variable(path, name, assigned.get(name), settings)
        else:
            for name in sorted(names):
                check_env_variable(path, name, None, settings)
    return finish()


def load_yaml(path):
    with open(path) as file:
        return yaml.safe_load(file)


def duration_secs(text):
    """Converts a Compose duration such as 40s or 1m30s to seconds; None if it has another form."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"([0-9]+)([hms])", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        return None
    return sum(int(n) * units[u] for n, u in parts)


def dependencies(service):
    """Returns depends_on as a mapping, whether it is written as a list or a mapping."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {target: {} for target in depends_on}
    return depends_on


def service_names_in_profile(services, profile):
    return {name for name, service in services.items()
            if not service.get("profiles") or profile in service["profiles"]}


def check_compose_service(path, name, service, services, settings):
    image = service.get("image", "")
    if "build" not in service:
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        if not tag or tag == "latest":
            report(path, f"service {name}: pin the image to a version tag, not {image!r}")

    one_shot = service.get("restart") == "no"
    if not one_shot and "healthcheck" not in service:
        report(path, f"service {name}: long-running services need a healthcheck")

    for target, dependency in dependencies(service).items():
        if target not in services:
            report(path, f"service {name} depends on unknown service {target}")
            continue
        target_profiles = services[target].get("profiles")
        for profile in service.get("profiles") or []:
            if target_profiles and profile not in target_profiles:
                report(path, f"service {name} in profile {profile} depends on {target}, "
                             f"which that profile does not start")
        condition = dependency.get("condition", "service_started")
        if condition == "service_healthy" and "healthcheck" not in services[target]:
            report(path, f"service {name} waits for {target} to be healthy, "
                         f"but {target} has no healthcheck")
        if condition == "service_completed_successfully" and \
                services[target].get("restart") != "no":
            report(path, f"service {name} waits for {target} to exit, "
                         f"but {target} is restarted")

    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for variable, value in environment.items():
        if variable.startswith(ENV_PREFIX):
            check_env_variable(path, variable, str(value), settings)

    if "build" in service:
        check_compose_bridge(path, name, service, settings)


def check_compose_bridge(path, name, service, settings):
    """Checks a service that runs the bridge image built from the Dockerfile."""
    if service.get("ports"):
        report(path, f"service {name}: a scaled service cannot publish ports")
    flush_secs = -(-settings["kafka"]["flush_timeout_ms"] // 1000)
    drain = settings["server"]["shutdown_timeout_secs"] + max(RABBITMQ_CLOSE_SECS, flush_secs)
    grace = duration_secs(service.get("stop_grace_period", "10s"))
    if grace is None:
        report(path, f"service {name}: write stop_grace_period in h, m and s, such as 40s")
    elif grace <= drain:
        report(path, f"service {name}: stop_grace_period {grace}s must exceed the bridge's "
                     f"drain time of {drain}s")


def nginx_upstreams(nginx_path):
    """Returns the host:port pairs that nginx.conf proxies to."""
    text = Path(nginx_path).read_text()
    upstreams = re.findall(r"set\s+\$\w+\s+([A-Za-z0-9.-]+):([0-9]+)\s*;", text)
    if not upstreams:
        report(nginx_path, "no `set $variable host:port;` upstream found")
    return upstreams


def check_load_balancers(path, services, nginx_path):
    upstreams = nginx_upstreams(nginx_path)
    mount_suffix = "/" + Path(nginx_path).name
    for name, service in services.items():
        mounts = [v for v in service.get("volumes") or [] if isinstance(v, str)]
        if not any(v.split(":")[0].endswith(mount_suffix) for v in mounts):
            continue
        for profile in service.get("profiles") or [None]:
            active = service_names_in_profile(services, profile) if profile else set(services)
            for host, port in upstreams:
                targets = [s for s in active if s == host or host in service_aliases(services[s])]
                if not targets:
                    report(path, f"{name} (profile {profile}) proxies to {host}, which no "
                                 f"service or alias of that profile provides")
                for target in targets:
                    exposed = {str(p) for p in services[target].get("expose") or []}
                    if port not in exposed:
                        report(path, f"{name} proxies to {host}:{port}, but {target} does "
                                     f"not expose {port}")
                    if target not in dependencies(service):
                        report(path, f"{name} should wait for {target} (depends_on)")


def service_aliases(service):
    aliases = set()
    networks = service.get("networks") or {}
    if isinstance(networks, dict):
        for network in networks.values():
            aliases.update((network or {}).get("aliases") or [])
    return aliases


def cmd_compose(compose_path, nginx_path):
    settings = load_settings()
    compose = load_yaml(compose_path)
    if "version" in compose:
        report(compose_path, "the Compose Specification has no top-level version")
    services = compose.get("services") or {}
    for name, service in services.items():
        check_compose_service(compose_path, name, service, services, settings)
    check_load_balancers(compose_path, services, nginx_path)
    return finish()


def load_documents(path):
    with open(path) as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def cmd_split(build_path, rest_path, monitors_path):
    """Writes ServiceMonitors and all other documents of a kustomize build to two files."""
    documents = load_documents(build_path)
    monitors = [d for d in documents if d.get("kind") == "ServiceMonitor"]
    rest = [d for d in documents if d.get("kind") != "ServiceMonitor"]
    with open(rest_path, "w") as file:
        yaml.safe_dump_all(rest, file)
    with open(monitors_path, "w") as file:
        # check-jsonschema validates one document per file, so the monitors form a list.
        json.dump(monitors, file)
    return finish()


def selects(selector, labels):
    match = selector.get("matchLabels", selector) if selector else {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def by_kind(documents, kind):
    return [d for d in documents if d.get("kind") == kind]


def check_workload(path, overlay, deployment, documents, settings):
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    if not selects(deployment["spec"].get("selector"), pod_labels):
        report(path, f"Deployment {name}: selector does not match its pod labels")

    for kind in ("Service", "PodDisruptionBudget"):
        for document in by_kind(documents, kind):
            if not selects(document["spec"].get("selector"), pod_labels):
                report(path, f"{kind} {document['metadata']['name']}: selector does not "
                             f"match the pods of Deployment {name}")
    for hpa in by_kind(documents, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != ("Deployment", name):
            report(path, f"HorizontalPodAutoscaler {hpa['metadata']['name']} scales "
                         f"{target['kind']} {target['name']}, not Deployment {name}")

    for container in pod["spec"]["containers"]:
        check_container(path, overlay, container, pod["spec"], documents, settings)


def document_data(document):
    """Returns the keys and values of a ConfigMap or Secret, decoding Secret data."""
    data = dict(document.get("stringData") or {})
    for key, value in (document.get("data") or {}).items():
        if document["kind"] == "Secret":
            value = base64.b64decode(value).decode()
        data[key] = str(value)
    return data


def check_container(path, overlay, container, pod_spec, documents, settings):
    port_names = {p.get("name") for p in container.get("ports", [])}
    for probe, expected in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = (container.get(probe) or {}).get("httpGet")
        if not http:
            report(path, f"container {container['name']}: {probe} must be an httpGet probe")
            continue
        if http.get("path") != expected:
            report(path, f"container {container['name']}: {probe} must request {expected}")
        if http.get("port") not in port_names:
            report(path, f"container {container['name']}: {probe} port {http.get('port')} "
                         f"is not a container port")

    environment = {}
    for source in container.get("envFrom", []):
        for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if ref not in source:
                continue
            referenced = source[ref]["name"]
            found = [d for d in by_kind(documents, kind) if d["metadata"]["name"] == referenced]
            # The base leaves the Secret to the overlays.
            if not found and overlay != "base":
                report(path, f"container {container['name']}: {kind} {referenced} is not "
                             f"in the build")
            for document in found:
                environment.update(document_data(document))

    for variable, value in environment.items():
        check_env_variable(path, variable, value, settings)
    check_grace_period(path, container, pod_spec, environment, settings)


def check_grace_period(path, container, pod_spec, environment, settings):
    """Checks that the kubelet waits for the preStop sleep and the whole drain."""
    def setting(section, key):
        # A value that is not a number was reported already, so the default is used instead.
        value = environment.get(f"{ENV_PREFIX}{section.upper()}__{key.upper()}", "")
        return int(value) if value.isdigit() else settings[section][key]

    pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep")
    if not pre_stop:
        report(path, f"container {container['name']}: add a preStop sleep, so the endpoint is "
                     f"removed before SIGTERM")
    sleep = (pre_stop or {}).get("seconds", 0)
    kind = environment.get(f"{ENV_PREFIX}BROKER__KIND", settings["broker"]["kind"])
    flush_secs = -(-setting("kafka", "flush_timeout_ms") // 1000)
    close = RABBITMQ_CLOSE_SECS if kind == "rabbitmq" else flush_secs
    needed = sleep + setting("server", "shutdown_timeout_secs") + close
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    if grace <= needed:
        report(path, f"terminationGracePeriodSeconds {grace} must exceed preStop {sleep}s + "
                     f"shutdown {setting('server', 'shutdown_timeout_secs')}s + close {close}s")


def check_service_monitors(path, documents):
    services = by_kind(documents, "Service")
    for monitor in by_kind(documents, "ServiceMonitor"):
        name = monitor["metadata"]["name"]
        matched = [s for s in services
                   if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not matched:
            report(path, f"ServiceMonitor {name} selects no Service of the build")
        for endpoint in monitor["spec"]["endpoints"]:
            for service in matched:
                if endpoint.get("port") not in {p.get("name") for p in service["spec"]["ports"]}:
                    report(path, f"ServiceMonitor {name}: Service {service['metadata']['name']} "
                                 f"has no port named {endpoint.get('port')}")
            if endpoint.get("path") != "/metrics":
                report(path, f"ServiceMonitor {name} must scrape /metrics")


def cmd_kubernetes(build_path, overlay):
    settings = load_settings()
    documents = load_documents(build_path)
    # Problems name the kustomization, not the temporary file it was built into.
    source = "deploy/kubernetes/" + (overlay if overlay == "base" else f"overlays/{overlay}")
    deployments = by_kind(documents, "Deployment")
    if len(deployments) != 1:
        report(source, f"expected one Deployment, found {len(deployments)}")
    for deployment in deployments:
        check_workload(source, overlay, deployment, documents, settings)
    check_service_monitors(source, documents)

    if overlay in LABEL_VALUES["broker"]:
        kinds = {d["data"].get(f"{ENV_PREFIX}BROKER__KIND")
                 for d in by_kind(documents, "ConfigMap")}
        if kinds != {overlay}:
            report(source, f"overlay {overlay} sets broker kind {sorted(map(str, kinds))}")
        if not by_kind(documents, "ServiceMonitor"):
            report(source, f"overlay {overlay} has no ServiceMonitor")
    return finish()


def grafana_expr(expr):
    """Replaces Grafana's variables with values that PromQL accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_labels(name):
    base = name
    if name not in METRICS:
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in METRICS:
                base = name[: -len(suffix)]
    if base not in METRICS:
        return None
    kind, labels = METRICS[base]
    labels = labels | TARGET_LABELS
    if kind == "histogram" and name.endswith("_bucket"):
        labels = labels | {"le"}
    return labels


def check_expression(path, title, expr):
    try:
        ast = promql_parser.parse(grafana_expr(expr))
    except ValueError as error:
        report(path, f"panel {title!r}: invalid PromQL ({error}): {expr}")
        return

    aggregations = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            check_selector(path, title, node)
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier:
            aggregations.append(node)

    promql_parser.walk(ast, pre_visit=visit)
    for aggregation in aggregations:
        known = set()

        def collect(node):
            if isinstance(node, promql_parser.VectorSelector):
                known.update(metric_labels(node.name) or set())

        promql_parser.walk(aggregation.expr, pre_visit=collect)
        for label in aggregation.modifier.labels:
            if label not in known:
                report(path, f"panel {title!r}: no metric below `by` has the label {label}")


def check_selector(path, title, selector):
    labels = metric_labels(selector.name)
    if labels is None:
        report(path, f"panel {title!r}: {selector.name} is not in the metrics contract")
        return
    for matcher in selector.matchers.matchers:
        if matcher.name not in labels:
            report(path, f"panel {title!r}: {selector.name} has no label {matcher.name}")
            continue
        if matcher.op != promql_parser.MatchOp.Equal:
            continue
        allowed = LABEL_VALUES.get(matcher.name)
        if selector.name.startswith("webhook_bridge_publish_failures") and matcher.name == "reason":
            allowed = PUBLISH_FAILURE_REASONS
        if allowed and matcher.value not in allowed:
            report(path, f"panel {title!r}: {matcher.name}={matcher.value!r} is not one of "
                         f"{sorted(allowed)}")


def check_readme_metrics(readme_path):
    """Checks that README's Metrics section, once it exists, names every contract metric."""
    text = Path(readme_path).read_text()
    section = re.search(r"^#+\s+Metrics\s*$(.*?)(?=^#+\s|\Z)", text, re.M | re.S)
    if not section:
        return
    named = set(re.findall(r"webhook_bridge_[a-z0-9_]+", section.group(1)))
    for metric in sorted(set(METRICS) - named):
        report(readme_path, f"the Metrics section does not name {metric}")


def cmd_dashboard(path, readme_path):
    dashboard = json.loads(Path(path).read_text())
    if not isinstance(dashboard.get("schemaVersion"), int):
        report(path, "schemaVersion must be a number")
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource", {})
    if datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        report(path, "the datasource variable must be a Prometheus data source variable")

    ids = set()
    for panel in dashboard.get("panels", []):
        title = panel.get("title")
        if panel.get("id") in ids:
            report(path, f"panel {title!r}: duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            report(path, f"panel {title!r}: missing gridPos")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            report(path, f"panel {title!r}: use the ${{datasource}} variable")
        targets = panel.get("targets") or []
        if not targets:
            report(path, f"panel {title!r}: no query")
        for target in targets:
            check_expression(path, title, target.get("expr", ""))

    check_readme_metrics(readme_path)
    return finish()


COMMANDS = {
    "env-names": lambda args: cmd_env_names(args),
    "compose": lambda args: cmd_compose(*args),
    "kubernetes": lambda args: cmd_kubernetes(*args),
    "split": lambda args: cmd_split(*args),
    "dashboard": lambda args: cmd_dashboard(*args),
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
