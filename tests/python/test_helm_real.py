"""The chart installed, upgraded and uninstalled with the real Helm CLI against the real API
server (dev/kube): every object Helm says it made exists on the server, an upgrade's change
reaches the server, and an uninstall leaves none of the release's objects behind. For the
default values and for examples/production-values.yaml.

No scheduler runs: the Deployments' Pods are the stand-in node's to run, if it runs at all, so
nothing here waits for or asserts anything about Pods."""

import concurrent.futures
import json

import pytest
import yaml

import realkube
from realkube import ROOT

CHART = ROOT / "charts" / "coupon-system"
MONITORING_CRDS = ROOT / "tests" / "kube" / "fixtures" / "monitoring.coreos.com-crds.yaml"
TEST_LABEL = ("app.kubernetes.io/managed-by", "coupon-system-tests")
VALUES = {"default": None, "production": ROOT / "examples" / "production-values.yaml"}
RELEASE = "coupons"
# Helm 4: `--wait=false` is deprecated for hookOnly, which waits for hooks only (the chart has
# none): the server creates the objects, nobody waits for Pods.
NO_WAIT = "--wait=hookOnly"


@pytest.fixture(scope="module")
def kube():
    return realkube.connect()


@pytest.fixture(scope="module")
def monitoring_crds(kube):
    """The Prometheus Operator's kinds, as stand-ins where the real CRDs are not installed."""
    for crd in yaml.safe_load_all(MONITORING_CRDS.read_text()):
        name = crd["metadata"]["name"]
        found = kube.kubectl("get", "crd", name, "--ignore-not-found", "-o", "json").stdout
        if found and json.loads(found)["metadata"].get("labels", {}).get(TEST_LABEL[0]) != TEST_LABEL[1]:
            continue  # the real one
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd))
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


# The chart refuses jwt mode (its default) without an issuer and an audience.
IDENTITY = ["--set", "api.auth.jwt.issuer=https://id.shop.test", "--set", "api.auth.jwt.audience=coupons"]


def values_args(values):
    return ["-f", VALUES[values]] if VALUES[values] else IDENTITY


def objects(kube, manifest):
    """The server's copies of the objects of `manifest`, by (kind, namespace, name); fails if
    any is missing."""
    found = json.loads(kube.kubectl("get", "-f", "-", "-o", "json", input=manifest).stdout)
    items = found["items"] if found["kind"] == "List" else [found]
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in items}


def rendered(manifest):
    return [d for d in yaml.safe_load_all(manifest) if d]


def status(kube, namespace):
    return json.loads(kube.helm("status", RELEASE, "-n", namespace, "-o", "json").stdout)


@pytest.mark.parametrize("values", VALUES)
def test_install_upgrade_uninstall_on_the_real_server(kube, monitoring_crds, values):
    with realkube.namespace(kube, f"helm-{values}") as namespace:
        kube.helm("install", RELEASE, CHART, "-n", namespace, *values_args(values), NO_WAIT, "--timeout", "60s")
        first = status(kube, namespace)
        assert (first["info"]["status"], first["version"]) == ("deployed", 1), first["info"]

        # Every object Helm made is on the server, labelled as the release's.
        manifest = kube.helm("get", "manifest", RELEASE, "-n", namespace).stdout
        docs = rendered(manifest)
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"} <= kinds, kinds
        if values == "production":
            assert {"PodMonitor", "PrometheusRule", "PodDisruptionBudget", "NetworkPolicy"} <= kinds, kinds
        on_server = objects(kube, manifest)
        assert {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs} == set(on_server)
        for obj in on_server.values():
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "Helm", obj["metadata"]
            assert labels["app.kubernetes.io/instance"] == RELEASE, obj["metadata"]
            assert obj["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == namespace, obj["metadata"]
        # The CRD came from the chart's crds/ (installed by the first release on the cluster,
        # skipped as already present by every later one).
        kube.kubectl("wait", "--for=condition=Established", "crd/couponevents.coupons.fcfs.dev", "--timeout=30s")

        # An upgrade with changed values reaches the server.
        kube.helm(
            "upgrade", RELEASE, CHART, "-n", namespace, *values_args(values), NO_WAIT, "--timeout", "60s",
            "--set-json", 'api.podAnnotations={"example.com/rollout":"2"}', "--set", "api.service.port=8080",
        )
        second = status(kube, namespace)
        assert (second["info"]["status"], second["version"]) == ("deployed", 2), second["info"]
        api = json.loads(kube.kubectl("-n", namespace, "get", "deployment", "coupon-api", "-o", "json").stdout)
        assert api["spec"]["template"]["metadata"].get("annotations", {}).get("example.com/rollout") == "2", api["spec"]["template"]["metadata"]
        service = json.loads(kube.kubectl("-n", namespace, "get", "service", "coupon-api", "-o", "json").stdout)
        assert [p["port"] for p in service["spec"]["ports"]] == [8080], service["spec"]["ports"]
        upgraded = kube.helm("get", "manifest", RELEASE, "-n", namespace).stdout
        assert set(objects(kube, upgraded)) == set(on_server), "the same objects after the upgrade"

        # Uninstalled: none of the release's objects, and no release, remains.
        kube.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "60s")
        left = kube.kubectl("get", "-f", "-", "--ignore-not-found", "-o", "name", input=upgraded).stdout.split()
        assert left == [], left
        assert kube.helm("status", RELEASE, "-n", namespace, check=False).returncode != 0
        releases = kube.kubectl("-n", namespace, "get", "secrets", "-l", "owner=helm", "-o", "name").stdout.split()
        assert releases == [], releases


def test_two_releases_installed_at_once_do_not_conflict(kube, monitoring_crds):
    # Same release name, two namespaces, at the same time: both find or create the CRD, and no
    # object of one (cluster-scoped ones included) is the other's.
    with realkube.namespace(kube, "helm-a") as a, realkube.namespace(kube, "helm-b") as b:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            installs = [
                pool.submit(kube.helm, "install", RELEASE, CHART, "-n", namespace, *IDENTITY, NO_WAIT, "--timeout", "60s")
                for namespace in (a, b)
            ]
            for install in installs:
                install.result()
        manifests = {}
        for namespace in (a, b):
            assert status(kube, namespace)["info"]["status"] == "deployed"
            manifests[namespace] = kube.helm("get", "manifest", RELEASE, "-n", namespace).stdout
            keys = objects(kube, manifests[namespace])
            assert {key[1] for key in keys} == {namespace, None}
            # Cluster-scoped: only the operator's rules that must outlive a namespace being
            # deleted and the admission policy on the release's events, named after the
            # release's namespace, so never the other release's.
            cluster_scoped = {(kind, name) for kind, ns, name in keys if ns is None}
            rules = f"{namespace}-{RELEASE}-coupon-operator-namespaces"
            policy = f"{namespace}-{RELEASE}-coupon-events"
            assert cluster_scoped == {
                ("ClusterRole", rules), ("ClusterRoleBinding", rules),
                ("ValidatingAdmissionPolicy", policy), ("ValidatingAdmissionPolicyBinding", policy),
            }, cluster_scoped
        for namespace in (a, b):
            kube.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "60s")
            left = kube.kubectl("get", "-f", "-", "--ignore-not-found", "-o", "name", input=manifests[namespace]).stdout.split()
            assert left == [], left
