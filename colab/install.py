"""Installs mbde_jax on a Colab (or any) runtime with JAX matched to its accelerator, in one pip command.

    python colab/install.py [--repo DIR] [--runtime auto|tpu|gpu|cpu] [--tensorflow auto|present|absent]
                            [--plan] [--dry_run_report FILE]

What it does:
  * finds the runtime: a TPU (COLAB_TPU_ADDR, TPU_NAME or /dev/accel*), a GPU (nvidia-smi answers), or the CPU;
  * installs the package (editable, from --repo) together with `jax[tpu]`, `jax[cuda12]` or plain `jax` (CPU)
    in ONE pip resolve, with the jax range read from setup.cfg. jax's extras pin jaxlib, libtpu and
    jax-cuda12-plugin/-pjrt to exactly its own version, so the result is never a mix of versions (installing
    flax or the package on their own would upgrade jax and leave the runtime's older plugin behind);
  * keeps a TensorFlow the runtime already has (Colab's GPU and CPU runtimes) and otherwise installs the
    package's [tensorflow] extra (tensorflow-cpu, for tf.data on the host);
  * on a CPU runtime, removes CUDA plugins left from the image (they would no longer match the new jax);
  * afterwards checks that jax, jaxlib and any CUDA plugin have one version, and says so if not.

--plan prints the runtime and the commands without running them. --dry_run_report FILE runs pip's resolver
only (`pip install --dry-run --ignore-installed --report FILE`: what a fresh runtime of that kind would get),
which is how the tests check the three runtime kinds without installing anything.
"""

from __future__ import annotations

import argparse
import configparser
import glob
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# jax's extra per runtime: it pins jaxlib and the plugin to jax's own version. jax has no CPU extra (any more);
# on the CPU the newest jax and jaxlib are released together, and check_versions() confirms they match.
JAX_EXTRA = {"tpu": "tpu", "gpu": "cuda12", "cpu": None}
MATCHING = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt")
STALE_ON_CPU = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt")


def detect_runtime() -> str:
    """'tpu', 'gpu' or 'cpu' for the machine this runs on."""
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") or glob.glob("/dev/accel*"):
        return "tpu"
    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0:
        return "gpu"
    return "cpu"


def has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def jax_requirement(repo: str) -> str:
    """The package's own jax requirement from setup.cfg, e.g. 'jax>=0.10.2,<0.12.1' (written there only)."""
    parser = configparser.ConfigParser()
    if not parser.read(os.path.join(repo, "setup.cfg")):
        raise SystemExit(f"Error: {repo} has no setup.cfg; pass --repo <a checkout of mbde_jax>.")
    for line in parser["options"]["install_requires"].splitlines():
        if line.strip().startswith("jax>") or line.strip().startswith("jax="):
            return line.strip()
    raise SystemExit(f"Error: no jax requirement in {repo}/setup.cfg [options] install_requires.")


def install_command(repo: str, runtime: str, tensorflow_present: bool) -> list[str]:
    """The one pip command: the package (+ [tensorflow] unless present) and jax[<runtime's extra>]."""
    package = f"{repo}[tensorflow]" if not tensorflow_present else repo
    requirement = jax_requirement(repo)
    if JAX_EXTRA[runtime]:
        requirement = requirement.replace("jax", f"jax[{JAX_EXTRA[runtime]}]", 1)
    return [sys.executable, "-m", "pip", "install", "-q", "-e", package, requirement]


def check_versions() -> str | None:
    """None when jax, jaxlib and the installed CUDA plugins have one version; else what differs."""
    versions = {}
    for name in MATCHING:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(set(versions.values())) > 1:
        return ", ".join(f"{name} {version}" for name, version in versions.items())
    return None


def stale_plugins() -> list[str]:
    """The CUDA plugin distributions installed here (to be removed on a CPU runtime)."""
    installed = {dist.metadata["Name"].lower() for dist in importlib.metadata.distributions()}
    return [name for name in STALE_ON_CPU if name in installed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=REPO, help="the mbde_jax checkout to install (default: this one)")
    parser.add_argument("--runtime", choices=("auto", "tpu", "gpu", "cpu"), default="auto")
    parser.add_argument("--tensorflow", choices=("auto", "present", "absent"), default="auto",
                        help="whether the runtime already has TensorFlow (auto: look)")
    parser.add_argument("--plan", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--dry_run_report", metavar="FILE",
                        help="only resolve, as on a fresh runtime, and write pip's JSON report to FILE")
    args = parser.parse_args(argv)

    repo = os.path.abspath(args.repo)
    runtime = detect_runtime() if args.runtime == "auto" else args.runtime
    tensorflow_present = has_tensorflow() if args.tensorflow == "auto" else args.tensorflow == "present"
    command = install_command(repo, runtime, tensorflow_present)
    uninstall = stale_plugins() if runtime == "cpu" and not args.dry_run_report else []
    if args.dry_run_report:
        command[4:4] = ["--dry-run", "--ignore-installed", "--report", args.dry_run_report]
    print(f"runtime: {runtime}; TensorFlow {'kept (already installed)' if tensorflow_present else 'installed'}")
    if uninstall:
        print("$ " + " ".join([sys.executable, "-m", "pip", "uninstall", "-y", *uninstall]))
    print("$ " + " ".join(command))
    if args.plan:
        return 0
    if uninstall:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *uninstall], check=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        print(f"Error: pip failed (exit {done.returncode}); its message is above.", file=sys.stderr)
        return done.returncode
    mismatch = None if args.dry_run_report else check_versions()
    if mismatch:
        print(f"Error: JAX's pieces have different versions after the install ({mismatch}); run "
              f"`pip uninstall -y jax jaxlib jax-cuda12-plugin jax-cuda12-pjrt` and this script again.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
