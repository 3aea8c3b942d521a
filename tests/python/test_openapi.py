"""The live api against its own OpenAPI document, with schemathesis: no 5xx, and every
response conforms to the document (status code, content type, body schema)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "debug" / "coupon-service"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


@pytest.fixture(scope="module")
def api():
    assert BINARY.exists(), "build it first: cargo build -p coupon-service (dev/test does)"
    env = {**os.environ, "COUPON_NAMESPACE": "schemathesis", "RUST_LOG": "warn"}
    event = f"st-{os.getpid()}-{int(time.time())}"
    subprocess.run(
        [BINARY, "event", "create", event, "--limit", "1000000", "--duration", "30m", "--topic", f"schemathesis.{event}", "--partitions", "1"],
        env=env, check=True, capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen([BINARY, "api"], env={**env, "LISTEN_ADDR": f"127.0.0.1:{port}"}, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while get(base + "/readyz")[0] != 200:
        assert time.time() < deadline, "api not ready"
        time.sleep(0.1)
    yield base, event
    process.terminate()
    process.wait(timeout=30)


def test_openapi_document_is_served(api):
    base, _ = api
    status, body = get(base + "/openapi.json")
    assert status == 200
    assert json.loads(body) == json.loads((ROOT / "service" / "src" / "http" / "openapi.json").read_text())


def test_schemathesis_finds_no_server_error_and_no_nonconforming_response(api, tmp_path):
    base, event = api
    # Generated requests name the provisioned event, so they reach the gate, not only 404.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.event" = "{event}"\n')
    result = subprocess.run(
        [
            Path(sys.executable).parent / "schemathesis", "--config-file", config, "run", base + "/openapi.json",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples", "100", "--seed", "1", "--no-color",
        ],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
