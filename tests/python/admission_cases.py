"""tests/kube/admission-cases.yaml: what the API server admits of a CouponEvent (see its header).
Read by test_admission.py (against the real server), test_manifests.py (the jsonschema
pre-check) and operator/tests/crd.rs (kube's CEL Validator and the operator's own check)."""

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "tests" / "kube" / "admission-cases.yaml"
SPEC = yaml.safe_load(FILE.read_text())
CASES = SPEC["cases"]
TRANSITIONS = SPEC["transitions"]


def base():
    """The object every case edits (a fresh copy)."""
    path, name = ROOT / SPEC["base"]["file"], SPEC["base"]["name"]
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CouponEvent" and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"{path}: no CouponEvent {name}")


def edited(obj, case):
    """`obj` with the case's edit: `path` set to `value` (added if missing), or removed."""
    obj = copy.deepcopy(obj)
    *parents, key = case["path"].split("/")[1:]
    target = obj
    for part in parents:
        target = target[part]
    if case.get("delete"):
        del target[key]
    else:
        target[key] = case["value"]
    return obj


def messages(case):
    """The fragments of the server's answer the case expects (refused cases)."""
    message = case["message"]
    return [message] if isinstance(message, str) else list(message)


def ids(case):
    return case["name"]
