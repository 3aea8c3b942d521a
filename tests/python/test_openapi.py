"""The live api against its own OpenAPI document, with schemathesis: no 5xx, and every
response conforms to the document (status code, content type, body schema)."""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "debug" / "coupon-service"



def coupon_database():
    """A SQLite file with the consumer's schema (its migrations, as the consumer applies them)."""
    path = Path(tempfile.mkdtemp()) / "coupons.db"
    migrations = sorted((Path(__file__).resolve().parents[2] / "service" / "src" / "sql" / "migrations" / "sqlite").glob("*.sql"))
    with sqlite3.connect(path) as db:
        for migration in migrations:
            db.executescript(migration.read_text())
    return path

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


# The api runs as the chart runs it: AUTH_MODE=jwt. The token is minted here (HS256).
SECRET = "schemathesis-shared-secret-of-32-bytes+"
ISSUER = "https://id.shop.test"
AUDIENCE = "coupons"
USER = "schemathesis-user"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(claims):
    signing_input = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


TOKEN = hs256_token({"sub": USER, "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 3600})


@pytest.fixture(scope="module")
def api():
    assert BINARY.exists(), "build it first: cargo build -p coupon-service (dev/test does)"
    env = {
        **os.environ, "COUPON_NAMESPACE": "schemathesis", "RUST_LOG": "warn",
        "AUTH_MODE": "jwt", "JWT_SECRET": SECRET, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE,
    }
    event = f"st-{os.getpid()}-{int(time.time())}"
    subprocess.run(
        [BINARY, "event", "create", event, "--limit", "1000000", "--duration", "30m", "--topic", f"schemathesis.{event}", "--partitions", "1"],
        # Asked whether the (new) event had coupons: the consumer's (empty) database says not.
        env={**env, "DATABASE_URL": f"sqlite://{coupon_database()}"}, check=True, capture_output=True,
    )
    port, ops_port = free_port(), free_port()
    process = subprocess.Popen(
        [BINARY, "api"], env={**env, "LISTEN_ADDR": f"127.0.0.1:{port}", "OPS_ADDR": f"127.0.0.1:{ops_port}"}, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while get(base + "/readyz")[0] != 200:
        assert time.time() < deadline, "api not ready"
        time.sleep(0.1)
    API_OPS[base] = f"http://127.0.0.1:{ops_port}"
    yield base, event
    process.terminate()
    process.wait(timeout=30)


# The ops listener of each api the fixture started (`/openapi.json`, `/metrics`).
API_OPS = {}
DOCUMENT = ROOT / "docs" / "openapi.json"


def test_openapi_document_is_served_on_the_ops_listener_only(api):
    base, _ = api
    status, body = get(API_OPS[base] + "/openapi.json")
    assert status == 200
    assert json.loads(body) == json.loads(DOCUMENT.read_text())
    assert get(API_OPS[base] + "/metrics")[0] == 200
    # The public listener tells an outsider nothing beyond its routes and probes.
    for path in ("/openapi.json", "/metrics"):
        assert get(base + path)[0] == 404, path
    assert get(base + "/readyz")[0] == 200


def test_schemathesis_finds_no_server_error_and_no_nonconforming_response(api, tmp_path):
    base, event = api
    # Generated requests name the provisioned event, so they reach the gate, not only 404.
    config = tmp_path / "schemathesis.toml"
    # With a token, generated bodies naming any other user are 400 by design, which
    # schemathesis would flag as a schema/validation mismatch of that one operation.
    config.write_text(
        f'[parameters]\n"path.event" = "{event}"\n\n'
        '[[operations]]\ninclude-path = "/v1/events/{event}/apply"\nwarnings = false\n'
    )
    # Every generated request carries the token (schemathesis keeps passing with a token).
    result = subprocess.run(
        [
            Path(sys.executable).parent / "schemathesis", "--config-file", config, "run", DOCUMENT, "--url", base,
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples", "100", "--seed", "1", "--no-color", "--header", f"Authorization: Bearer {TOKEN}",
        ],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
    # Every operation of the document was exercised, none skipped.
    operations = len([1 for item in json.loads(DOCUMENT.read_text())["paths"].values() for _ in item])
    assert re.search(rf"Tested:\s+{operations}\b", result.stdout), result.stdout[-3000:]


def test_without_a_token_every_user_route_is_401_with_a_challenge(api):
    base, event = api
    request = urllib.request.Request(f"{base}/v1/events/{event}/apply", data=b'{"userId":"anyone"}', method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("applied without a token")
    except urllib.error.HTTPError as error:
        assert error.code == 401
        assert json.loads(error.read()) == {"status": "unauthorized"}
        assert error.headers["WWW-Authenticate"] == 'Bearer realm="coupons"'


def test_with_the_token_the_user_is_the_tokens(api):
    base, event = api
    request = urllib.request.Request(f"{base}/v1/events/{event}/users/{USER}", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        status = urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as error:
        status = error.code
    assert status in (200, 404), status  # own coupon (or none yet), never 401/403
    other = urllib.request.Request(f"{base}/v1/events/{event}/users/someone-else", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        urllib.request.urlopen(other, timeout=5)
        raise AssertionError("read another user's coupon")
    except urllib.error.HTTPError as error:
        assert error.code == 403
