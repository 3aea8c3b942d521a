"""A release anyone can install: a license, one version everywhere, release notes from the
changelog, images with provenance and an SBOM, workflows actionlint accepts, and a README
whose install names what the release publishes."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "coupon-system"
ACTIONLINT = ROOT / ".dev" / "bin" / "actionlint"


def chart():
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def workspace_version():
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]


def test_the_license_is_the_one_cargo_declares():
    assert tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_one_version_in_the_workspace_the_chart_and_the_changelog():
    version = workspace_version()
    assert chart()["version"] == version, "Chart.yaml version"
    assert chart()["appVersion"] == version, "Chart.yaml appVersion: the images' default tag"
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert released and released[0] == version, f"the newest CHANGELOG.md section is {released[:1]}, not {version}"
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text(), "changes not released yet have a place"


def test_release_notes_are_the_versions_changelog_section():
    version = workspace_version()
    notes = subprocess.run([ROOT / ".github" / "release-notes", version], check=True, capture_output=True, text=True).stdout
    assert "### Added" in notes and f"## [{version}]" not in notes, notes
    assert "## [" not in notes, "only this version's section"
    missing = subprocess.run([ROOT / ".github" / "release-notes", "99.0.0"], capture_output=True, text=True)
    assert missing.returncode != 0 and "no notes for 99.0.0" in missing.stderr, "a tag without notes publishes nothing"


def test_the_release_attests_its_images_and_publishes_the_notes():
    release = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    builds = [step for job in release["jobs"].values() for step in job.get("steps", [])
              if step.get("uses", "").startswith("docker/build-push-action@")]
    assert builds, "the images are built by docker/build-push-action"
    for step in builds:
        assert step["with"].get("provenance") == "mode=max" and step["with"].get("sbom") is True, step
    version_check = " ".join(step.get("run", "") for step in release["jobs"]["version"]["steps"])
    assert ".github/release-notes" in version_check, "a tag without notes fails before anything is pushed"
    publish = " ".join(step.get("run", "") for step in release["jobs"]["notes"]["steps"])
    assert ".github/release-notes" in publish and "gh release create" in publish


def test_the_workflows_pass_actionlint():
    assert ACTIONLINT.exists(), f"{ACTIONLINT} is missing: tests/kube/build builds it (dev/test runs it first)"
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    # shellcheck checks the run: scripts too when it is installed (dev/stack tools installs it).
    result = subprocess.run([ACTIONLINT, "-no-color", *workflows], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_installs_what_the_release_publishes():
    readme = (ROOT / "README.md").read_text()
    version = chart()["version"]
    installs = re.findall(r"helm install \S+ (oci://\S+) --version (\S+)", readme)
    assert installs, "the README installs the published chart"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    owner = values["image"]["service"]["repository"].split("/")[1]
    for url, installed in installs:
        assert url == f"oci://ghcr.io/{owner}/charts/{chart()['name']}", url
        assert installed == version, f"the README installs {installed}, the chart is {version}"
    for image in ("service", "operator"):
        assert values["image"][image]["repository"] == f"ghcr.io/{owner}/coupon-{image}"
