"""What the project ships is what was reviewed: base images pinned by digest, a runtime image
without a shell, GitHub Actions pinned by commit, and write permissions only in the jobs that
push. Read from the files themselves (no docker here); the binaries the tests built are
checked to load only libraries the runtime image has."""

import os
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
COMMIT = re.compile(r"^[^@\s]+@[0-9a-f]{40}$")
# The images a runtime stage may start from: none has a shell or a package manager (the
# distroless `debug` variants do, and are refused).
SHELL_LESS = re.compile(r"^gcr\.io/distroless/(static|base|cc)-debian1[23]:(nonroot|latest)@")
# What gcr.io/distroless/cc-debian12 holds (glibc, libgcc, libssl3): a binary that needs
# anything else would not start in it.
RUNTIME_LIBRARIES = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1",
                     "libutil.so.1", "libgcc_s.so.1", "libssl.so.3", "libcrypto.so.3", "libstdc++.so.6"}


def stages():
    """`(base, name, instructions)` for each stage of the Dockerfile."""
    result = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction = line.split()[0].upper()
        if instruction == "FROM":
            words = line.split()
            name = words[3] if len(words) > 3 and words[2].upper() == "AS" else None
            result.append((words[1], name, []))
        elif result:
            result[-1][2].append(instruction)
    return result


def test_every_base_image_is_pinned_by_digest():
    named = {name for _, name, _ in stages() if name}
    external = [base for base, _, _ in stages() if base not in named]
    assert external, "the Dockerfile names no base image"
    for base in external:
        assert DIGEST.search(base), f"{base}: pin it by digest (image:tag@sha256:...)"
        assert "/" in base.split("@")[0].split(":")[0], f"{base}: name its registry, not a short name"


def test_the_runtime_images_have_no_shell():
    by_name = {name: (base, instructions) for base, name, instructions in stages() if name}
    for target in ("coupon-service", "coupon-operator"):
        base, instructions = by_name[target]
        chain = [target]
        while base in by_name:  # a stage built on another stage
            chain.append(base)
            base, more = by_name[base]
            instructions = instructions + more
        assert SHELL_LESS.match(base), f"{target} runs on {base}: not an image without a shell"
        assert "RUN" not in instructions, f"{' <- '.join(chain)}: a RUN needs a shell the image does not have"
        entrypoint = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT")]
        assert all(line.startswith('ENTRYPOINT ["') for line in entrypoint), "exec form only: no shell to run a string"


def test_every_action_is_pinned_by_commit():
    assert WORKFLOWS, "no workflows found"
    for path in WORKFLOWS:
        text = path.read_text()
        workflow = yaml.safe_load(text)
        for job_name, job in workflow["jobs"].items():
            for step in job.get("steps", []):
                uses = step.get("uses")
                if uses is None or uses.startswith("./"):
                    continue
                assert COMMIT.match(uses), f"{path.name} {job_name}: {uses} is not pinned by commit"
                # The tag the commit was, for the next engineer (and Dependabot) to read.
                line = next(line for line in text.splitlines() if uses in line)
                assert re.search(r"#\s*v\d", line), f"{path.name}: say which release {uses} is (# vX.Y.Z)"
            for service in job.get("services", {}).values():
                assert DIGEST.search(service["image"]), f"{path.name} {job_name}: service image {service['image']} not pinned"


def test_write_permissions_only_where_something_is_pushed():
    for path in WORKFLOWS:
        workflow = yaml.safe_load(path.read_text())
        assert workflow.get("permissions") in ({"contents": "read"}, {}), f"{path.name}: the workflow's default must be read-only"
        for job_name, job in workflow["jobs"].items():
            permissions = job.get("permissions", {})
            writes = {scope for scope, level in permissions.items() if level == "write"}
            steps = " ".join(str(step) for step in job.get("steps", []))
            # What each write is for: packages to push images and the chart, contents to
            # publish the release.
            needed = set()
            if "push=true" in steps or "helm push" in steps or "imagetools create" in steps:
                needed.add("packages")
            if "gh release create" in steps:
                needed.add("contents")
            assert writes == needed, f"{path.name} {job_name}: writes {writes}, needs {needed}"


def test_the_binaries_load_only_what_the_runtime_image_has():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    for binary in ("coupon-service", "coupon-operator"):
        path = target / binary
        assert path.exists(), f"{path}: build the workspace first (dev/test does)"
        linked = subprocess.run(["ldd", str(path)], check=True, capture_output=True, text=True).stdout
        needed = {line.split()[0] for line in linked.splitlines() if line.strip() and "ld-linux" not in line}
        assert needed <= RUNTIME_LIBRARIES, f"{binary} needs {sorted(needed - RUNTIME_LIBRARIES)}, which the runtime image lacks"
