"""The local Kubernetes control plane of the tests (dev/kube): kubectl and helm from .dev/bin,
run against the API server of $KUBECONFIG (by default .dev/kube/kubeconfig).

A missing tool, kubeconfig or API server fails the test that needs them (never a skip): the
checks against the real server are part of the suite (dev/test starts the server first)."""

import contextlib
import os
import secrets
import subprocess
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".dev" / "bin"
DEFAULT_KUBECONFIG = ROOT / ".dev" / "kube" / "kubeconfig"


class Kube:
    def __init__(self, kubeconfig):
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(self, tool, *args, input=None, check=True, timeout=120):
        """`tool args...`; with `check`, a non-zero exit fails the test with its stderr."""
        command = [str(BIN / tool), *map(str, args)]
        try:
            return subprocess.run(
                command, check=check, capture_output=True, text=True, input=input, env=self.env, timeout=timeout
            )
        except subprocess.CalledProcessError as e:
            pytest.fail(f"`{' '.join(command)}` exited {e.returncode}:\n{e.stderr}{e.stdout}", pytrace=False)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"`{' '.join(command)}` took more than {timeout} s:\n{e.stderr or ''}{e.stdout or ''}", pytrace=False)

    def kubectl(self, *args, **kwargs):
        return self.run("kubectl", *args, **kwargs)

    def helm(self, *args, **kwargs):
        return self.run("helm", *args, **kwargs)


def connect():
    """The API server, or a failed test saying what is missing."""
    missing = [tool for tool in ("kubectl", "helm") if not os.access(BIN / tool, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing from {BIN}: tests/kube/build builds them (dev/kube up builds and starts the control plane)",
            pytrace=False,
        )
    kubeconfig = Path(os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG)
    if not kubeconfig.is_file():
        pytest.fail(
            f"no kubeconfig at {kubeconfig} (KUBECONFIG={os.environ.get('KUBECONFIG', '')!r}): start the API server with `dev/stack up kube`",
            pytrace=False,
        )
    kube = Kube(kubeconfig)
    ready = kube.kubectl("get", "--raw", "/readyz", check=False, timeout=30)
    if ready.returncode != 0:
        pytest.fail(
            f"the API server of {kubeconfig} is not ready (`dev/stack up kube` starts it):\n{ready.stderr}{ready.stdout}",
            pytrace=False,
        )
    return kube


def unique(prefix):
    return f"{prefix}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def namespace(kube, prefix):
    """A new namespace, deleted afterwards (with what is left in it)."""
    name = unique(prefix)
    kube.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
        # Pods, if a node ran any, go with their node's help: do not wait on them for long.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not kube.kubectl("get", "namespace", name, "--ignore-not-found", "-o", "name").stdout.strip():
                break
            time.sleep(0.5)
        else:
            warnings.warn(f"namespace {name} is still terminating after 60 s (Pods its node did not stop?)")


def apply_crd(kube, path, name):
    """Applies the CRD(s) at `path` (server-side) and waits until `name` is Established."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", path)
    kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
