"""What one tenant may ask of the shared Kafka, decided by the real API server: the chart's
ValidatingAdmissionPolicy (templates/admission.yaml), rendered with Helm's own engine and
applied to the local kube-apiserver (dev/kube), refuses a CouponEvent with more partitions
than the cap, and with `operator.namespaceSelector` one created in a namespace without the
labels; an event created before a lower cap keeps its partitions and can still be edited."""

import copy
import json
import time

import helm_python
import pytest
import yaml

import realkube
from admission_cases import ROOT

CHART = ROOT / "charts" / "coupon-system"
CRD = ROOT / "crds" / "couponevents.coupons.fcfs.dev.yaml"
EVENT = yaml.safe_load((ROOT / "examples" / "flash-sale.yaml").read_text())
IDENTITY = {"api": {"auth": {"jwt": {"issuer": "https://id.shop.test", "audience": "coupons"}}}}
TENANT_LABEL = "coupons.fcfs.dev/tenant"


@pytest.fixture(scope="module")
def kube():
    kube = realkube.connect()
    realkube.apply_crd(kube, CRD.parent, "couponevents.coupons.fcfs.dev")
    return kube


def policy_docs(release, values):
    chart = helm_python.Chart.load(str(CHART))
    files = chart.render({**IDENTITY, **values}, name=release, namespace="default", is_install=True)
    docs = [d for path, text in files.items() if path.endswith("admission.yaml") for d in yaml.safe_load_all(text) if d]
    assert {d["kind"] for d in docs} == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    return docs


def apply_policy(kube, docs):
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs))


def delete_policy(kube, docs):
    for d in docs:
        kube.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "--ignore-not-found")


def event(namespace, name, partitions, limit=100):
    obj = copy.deepcopy(EVENT)
    obj["metadata"] = {"name": name, "namespace": namespace}
    obj["spec"]["partitions"] = partitions
    obj["spec"]["limit"] = limit
    return obj


def send(kube, obj, dry_run=True):
    args = ["apply", "--server-side", "-o", "json", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    return kube.kubectl(*args, input=json.dumps(obj), check=False)


def refused_until(kube, obj, words, timeout=30):
    """Waits for the policy to take effect (the server compiles it in the background): the
    object is refused, with `words` in the answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = send(kube, obj)
        if answer.returncode != 0:
            assert words in answer.stderr, answer.stderr
            return
        assert time.monotonic() < deadline, f"still admitted after {timeout} s: the policy never took effect"
        time.sleep(0.5)


def test_partitions_above_the_cap_are_refused_and_existing_events_keep_theirs(kube):
    release = realkube.unique("caps")
    with realkube.namespace(kube, "tenant") as namespace:
        generous = policy_docs(release, {"operator": {"watchNamespace": namespace}, "admission": {"maxPartitionsPerEvent": 64}})
        try:
            apply_policy(kube, generous)
            refused_until(kube, event(namespace, "too-wide", 65), "above this cluster's cap of 64 per event")
            assert send(kube, event(namespace, "at-the-cap", 64)).returncode == 0
            # Created under the generous cap, for real; then the cap is lowered.
            assert send(kube, event(namespace, "wide", 32), dry_run=False).returncode == 0
            strict = policy_docs(release, {"operator": {"watchNamespace": namespace}, "admission": {"maxPartitionsPerEvent": 8}})
            apply_policy(kube, strict)
            refused_until(kube, event(namespace, "new-wide", 32), "cap of 8 per event")
            edited = send(kube, event(namespace, "wide", 32, limit=200))
            assert edited.returncode == 0, f"an existing event is edited under a lower cap:\n{edited.stderr}"
            # The binding covers the watched namespace only.
            with realkube.namespace(kube, "elsewhere") as elsewhere:
                assert send(kube, event(elsewhere, "wide", 32)).returncode == 0
        finally:
            delete_policy(kube, generous)


def test_with_a_namespace_selector_only_labelled_namespaces_take_new_events(kube):
    release = realkube.unique("tenants")
    values = {"operator": {"watchAllNamespaces": True, "namespaceSelector": {TENANT_LABEL: "true"}}}
    docs = policy_docs(release, values)
    with realkube.namespace(kube, "unlabelled") as unlabelled, realkube.namespace(kube, "labelled") as labelled:
        kube.kubectl("label", "namespace", labelled, f"{TENANT_LABEL}=true")
        try:
            apply_policy(kube, docs)
            refused_until(kube, event(unlabelled, "sale", 3), f"not accepted in namespace {unlabelled}")
            assert send(kube, event(labelled, "sale", 3)).returncode == 0
            # Created while labelled, then the label goes: the event can still be edited.
            assert send(kube, event(labelled, "kept", 3), dry_run=False).returncode == 0
            kube.kubectl("label", "namespace", labelled, f"{TENANT_LABEL}-")
            refused_until(kube, event(labelled, "new", 3), "lacks the labels")
            assert send(kube, event(labelled, "kept", 3, limit=50)).returncode == 0
        finally:
            delete_policy(kube, docs)
