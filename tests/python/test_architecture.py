"""Checks of the code's shape that a compiler does not make: one owner of the Redis keyspace,
one place that builds each process, and an operator that does not depend on the service."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYSPACE = ROOT / "core" / "src" / "redis" / "keyspace"
REDIS_FOLDER = ROOT / "core" / "src" / "redis"
APP = ROOT / "service" / "src" / "app.rs"
CRATES = ["core", "service", "operator", "tests", "bench"]
# Hash fields of the event config; only the keyspace may spell them as strings.
CONFIG_FIELDS = ["per_user", "start_ms", "end_ms", "recovering", "recovering_since_ms", "server", "restoring", "deleted", "holders_version", "holders_base", "holders_logged", "lease_ms"]


def rust_sources():
    for crate in CRATES:
        yield from (ROOT / crate).rglob("*.rs")


def outside(folder):
    return [p for p in rust_sources() if folder not in p.parents]


def test_only_the_keyspace_spells_redis_keys_and_config_fields():
    offenders = []
    for path in outside(KEYSPACE):
        text = path.read_text()
        if "coupon:{" in text or "coupon:events" in text:
            offenders.append(f"{path}: key name")
        for field in CONFIG_FIELDS:
            if re.search(rf'"{field}"', text):
                offenders.append(f"{path}: field {field}")
    assert offenders == []


def test_only_the_redis_folder_sends_commands():
    # Tests may inject a whole-server fault (FLUSHALL, CLIENT PAUSE, a SAVE to roll back
    # to); nothing else sends raw commands.
    faults = ['redis::cmd("FLUSHALL")', 'redis::cmd("CLIENT").arg("PAUSE")', 'redis::cmd("SAVE")']
    offenders = []
    for path in outside(REDIS_FOLDER):
        for line in path.read_text().splitlines():
            if "redis::cmd(" in line and not any(fault in line for fault in faults):
                offenders.append(f"{path}: {line.strip()}")
            if "redis::pipe(" in line or "Script::new(" in line:
                offenders.append(f"{path}: {line.strip()}")
    assert offenders == []


def test_scripts_are_lua_files_of_the_keyspace():
    scripts = sorted(p.name for p in (KEYSPACE / "lua").glob("*.lua"))
    assert scripts == sorted(
        [
            "ack.lua",
            "apply.lua",
            "close_grant.lua",
            "common.lua",
            "delete.lua",
            "fence.lua",
            "grant.lua",
            "heal.lua",
            "holder_changes.lua",
            "idempotency_claim.lua",
            "idempotency_finish.lua",
            "issued.lua",
            "provision.lua",
            "release.lua",
            "restore_begin.lua",
            "restore_chunk.lua",
            "restore_finish.lua",
            "retire.lua",
            "settle_grant.lua",
            "written.lua",
        ]
    )
    for path in KEYSPACE.glob("*.rs"):
        assert "redis.call(" not in path.read_text(), f"{path}: inline Lua"


def test_processes_are_assembled_in_app_only():
    markers = ["ApplyService::new(", "consumer::run(", "ProducerSlot::new(", re.compile(r"(?<!struct )ApiState \{")]
    offenders = []
    for path in rust_sources():
        if path == APP:
            continue
        text = path.read_text()
        for marker in markers:
            found = marker.search(text) if isinstance(marker, re.Pattern) else marker in text
            if found:
                offenders.append(f"{path}: {marker}")
    assert offenders == []


def test_the_operator_depends_on_core_not_on_the_service():
    manifest = (ROOT / "operator" / "Cargo.toml").read_text()
    assert "coupon-core" in manifest
    for forbidden in ["coupon-service", "sqlx", "reqwest", "indicatif", "hdrhistogram"]:
        assert forbidden not in manifest, forbidden
