"""What the API server admits of a CouponEvent, decided by the real server: the CRD of crds/ is
applied to the local kube-apiserver (dev/kube), then every example and every case of
tests/kube/admission-cases.yaml is sent with `kubectl apply --server-side --dry-run=server`, and
the server's verdict and words are compared with the file's. The faster pre-checks (kube's CEL
Validator in operator/tests/crd.rs, jsonschema in test_manifests.py) must agree with the same
file, so they are checked against the server through it."""

import json

import pytest
import yaml

import admission_cases
import realkube
from admission_cases import CASES, ROOT, TRANSITIONS

CRD = ROOT / "crds" / "couponevents.coupons.fcfs.dev.yaml"
CHART_CRD = ROOT / "charts" / "coupon-system" / "crds" / CRD.name


@pytest.fixture(scope="module")
def kube():
    return realkube.connect()


@pytest.fixture(scope="module")
def crd(kube):
    assert CHART_CRD.read_bytes() == CRD.read_bytes(), f"{CHART_CRD} differs from {CRD}: the chart installs its own copy"
    realkube.apply_crd(kube, CRD.parent, "couponevents.coupons.fcfs.dev")


@pytest.fixture(scope="module")
def namespace(kube, crd):
    with realkube.namespace(kube, "admission") as name:
        yield name


def dry_run(kube, namespace, obj):
    """The server's answer to applying `obj` in `namespace`, stored nowhere."""
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    return kube.kubectl(
        "apply", "--server-side", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(obj), check=False
    )


def pointer(obj, path):
    for part in path.split("/")[1:]:
        obj = obj[part]
    return obj


def assert_verdict(answer, case):
    said = answer.stderr + answer.stdout
    if case["verdict"] == "accept":
        assert answer.returncode == 0, f"the server refuses it:\n{said}"
        admitted = json.loads(answer.stdout)
        if not case.get("delete"):
            # The edit reached the server as sent (not dropped or rewritten on the way).
            assert pointer(admitted, case["path"]) == case["value"], admitted["spec"]
        return admitted
    assert case["verdict"] == "refuse", case
    assert answer.returncode != 0, f"the server accepts it:\n{said}"
    for fragment in admission_cases.messages(case):
        assert fragment in said, f"the server does not say {fragment!r}; it says:\n{said}"


def coupon_events():
    """Every CouponEvent of examples/, by file."""
    events = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        events.extend((path.name, d) for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CouponEvent")
    assert len(events) >= 3, events
    return events


def test_every_example_is_admitted(kube, namespace):
    for path, event in coupon_events():
        answer = dry_run(kube, namespace, event)
        assert answer.returncode == 0, f"{path} {event['metadata']['name']}:\n{answer.stderr}"
        admitted = json.loads(answer.stdout)
        assert admitted["spec"]["limit"] == event["spec"]["limit"]
        # The schema's defaults are the server's to fill in.
        assert {"topic", "partitions", "shards", "perUserLimit", "onDelete", "paused"} <= admitted["spec"].keys()


@pytest.mark.parametrize("case", CASES, ids=admission_cases.ids)
def test_the_server_decides_each_case(kube, namespace, case):
    assert_verdict(dry_run(kube, namespace, admission_cases.edited(admission_cases.base(), case)), case)


@pytest.fixture(scope="module")
def existing(kube, namespace):
    """The base, created for real (under its own name, so the other cases stay creations)."""
    obj = admission_cases.base()
    obj["metadata"] = {**obj["metadata"], "name": obj["metadata"]["name"] + "-existing", "namespace": namespace}
    kube.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))
    return obj


@pytest.mark.parametrize("case", TRANSITIONS, ids=admission_cases.ids)
def test_the_server_decides_each_transition(kube, namespace, existing, case):
    admitted = assert_verdict(dry_run(kube, namespace, admission_cases.edited(existing, case)), case)
    if admitted is not None:
        stored = json.loads(kube.kubectl("-n", namespace, "get", "couponevent", existing["metadata"]["name"], "-o", "json").stdout)
        assert admitted["metadata"]["uid"] == stored["metadata"]["uid"], "an edit of the existing object, not a new one"
        if case.get("delete"):
            # Left out of the manifest: the schema's default is back, and equal to the old value.
            assert pointer(admitted, case["path"]) == pointer(stored, case["path"])
