"""colab/install.py resolves, for each runtime kind, to one jax with its own jaxlib and accelerator plugin.

Each test runs the script's real pip command through pip's resolver only (--dry-run --ignore-installed
--report: what a fresh runtime of that kind would install) on this interpreter, and reads pip's JSON report.
It needs the package index, as installing does.
"""

import importlib.metadata
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "colab" / "install.py"


def resolve(tmp_path, runtime: str, tensorflow: str) -> tuple[dict[str, str], dict[str, list[str]], str]:
    """({name: version}, {name: requires_dist}) of what pip would install, and the script's output."""
    report = tmp_path / f"{runtime}.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--runtime", runtime, "--tensorflow", tensorflow,
                           "--dry_run_report", str(report)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = json.loads(report.read_text())["install"]
    versions = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in installs}
    requires = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"].get("requires_dist", [])
                for item in installs}
    print(runtime, {name: versions[name] for name in sorted(versions) if "jax" in name or name in
                    ("flax", "libtpu", "tensorflow-cpu", "tensorflow", "numpy")})
    return versions, requires, done.stdout


def assert_pinned_by_jax(requires_dist: list[str], name: str, extra: str, resolved: str) -> None:
    """jax[extra] pins `name` to one release (`==V` or `==V.*`), and the resolved version is that one."""
    applicable = [Requirement(line) for line in requires_dist
                  if Requirement(line).name.lower() == name and Requirement(line).marker is not None
                  and Requirement(line).marker.evaluate({"extra": extra})]
    assert applicable, f"jax's metadata does not require {name} under [{extra}]"
    for requirement in applicable:
        specs = list(requirement.specifier)
        bounds = {spec.version for spec in specs if spec.operator in (">=", "<=")}
        pinned = any(spec.operator == "==" for spec in specs) or (
            {spec.operator for spec in specs} == {">=", "<="} and len(bounds) == 1)
        assert pinned, f"{name} is not pinned to one release by jax[{extra}]: {requirement}"
        assert requirement.specifier.contains(resolved, prereleases=True), (name, resolved, str(requirement))


def assert_package_installs(versions: dict[str, str]) -> None:
    assert "mbde-jax" in versions, "the package itself is not in the resolution"
    for name in ("flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "clu"):
        assert name in versions, f"{name} missing from the resolution"


def test_tpu_runtime_without_tensorflow(tmp_path):
    versions, requires, output = resolve(tmp_path, "tpu", "absent")
    assert_package_installs(versions)
    assert versions["jaxlib"] == versions["jax"]
    assert_pinned_by_jax(requires["jax"], "libtpu", "tpu", versions["libtpu"])
    assert "tensorflow-cpu" in versions and "tensorflow" not in versions  # tf.data on the host
    assert not any(name.startswith("jax-cuda") for name in versions)
    assert "runtime: tpu; TensorFlow installed" in output


def test_gpu_runtime_with_tensorflow(tmp_path):
    versions, requires, output = resolve(tmp_path, "gpu", "present")
    assert_package_installs(versions)
    assert versions["jaxlib"] == versions["jax"]
    assert versions["jax-cuda12-plugin"] == versions["jax"]
    assert_pinned_by_jax(requires["jax"], "jax-cuda12-plugin", "cuda12", versions["jax-cuda12-plugin"])
    assert versions["jax-cuda12-pjrt"] == versions["jax"]
    # The runtime's TensorFlow is kept: no second TensorFlow distribution over it.
    assert "tensorflow-cpu" not in versions and "tensorflow" not in versions
    assert "TensorFlow kept" in output


def test_cpu_runtime(tmp_path):
    versions, requires, _ = resolve(tmp_path, "cpu", "absent")
    assert_package_installs(versions)
    assert versions["jaxlib"] == versions["jax"]  # jax has no CPU extra: the newest of each, released together
    assert "libtpu" not in versions and not any(name.startswith("jax-cuda") for name in versions)


def test_plan_reads_jax_range_from_setup_cfg():
    done = subprocess.run([sys.executable, str(SCRIPT), "--runtime", "gpu", "--tensorflow", "absent", "--plan"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    setup_cfg = (ROOT / "setup.cfg").read_text()
    jax_line = next(line.strip() for line in setup_cfg.splitlines() if line.strip().startswith("jax>"))
    assert jax_line.replace("jax", "jax[cuda12]", 1) in done.stdout
    assert f"-e {ROOT}[tensorflow]" in done.stdout


@pytest.mark.parametrize("runtime", ["tpu", "gpu", "cpu"])
def test_plan_names_the_matching_jax_extra(runtime):
    jax = {"tpu": "jax[tpu]>=", "gpu": "jax[cuda12]>=", "cpu": " jax>="}[runtime]
    done = subprocess.run([sys.executable, str(SCRIPT), "--runtime", runtime, "--tensorflow", "present", "--plan"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert jax in done.stdout and "[tensorflow]" not in done.stdout


def test_after_the_install_a_version_mix_is_reported(monkeypatch):
    spec = importlib.util.spec_from_file_location("colab_install", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    installed = {"jax": "0.12.0.1", "jaxlib": "0.12.0.1", "jax-cuda12-plugin": "0.12.0.1"}

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(script.importlib.metadata, "version", version)
    assert script.check_versions() is None
    installed["jax-cuda12-plugin"] = "0.7.2"  # a runtime's old plugin left behind by a jax upgrade
    assert script.check_versions() == "jax 0.12.0.1, jaxlib 0.12.0.1, jax-cuda12-plugin 0.7.2"
