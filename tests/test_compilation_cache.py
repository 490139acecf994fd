"""The persistent compilation cache every command uses (mbde_jax.compilation_cache): where it is, that a
second process of the same config compiles nothing, and that a cache it cannot write only warns."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from mbde_jax import compilation_cache

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "test.py"),
         "--config.dataset=digits", "--config.train_examples=360", "--config.num_epochs=1",
         "--config.lr_boundaries_epochs=()", "--config.rampup_epochs=1"]  # 45 steps


def test_the_cache_directory_is_the_switch_then_jax_then_the_user_cache():
    assert compilation_cache.directory_for({"MBDE_COMPILATION_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": "/j"}) is None
    assert compilation_cache.directory_for({"MBDE_COMPILATION_CACHE": " OFF "}) is None
    assert compilation_cache.directory_for({"MBDE_COMPILATION_CACHE": "/m", "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/m"
    assert compilation_cache.directory_for({"JAX_COMPILATION_CACHE_DIR": "/j", "XDG_CACHE_HOME": "/x"}) == "/j"
    assert compilation_cache.directory_for({"XDG_CACHE_HOME": "/x"}) == "/x/mbde_jax/xla"
    assert compilation_cache.default_directory({}) == os.path.expanduser("~/.cache/mbde_jax/xla")


def _entries(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same config trained twice, in two processes and workdirs, with the default cache location (under
    XDG_CACHE_HOME) and every program written to it: {'cache', 'first', 'second', 'entries': [after 1, after 2]}."""
    base = tmp_path_factory.mktemp("cache_runs")
    env = {name: value for name, value in os.environ.items()
           if name not in ("JAX_COMPILATION_CACHE_DIR", compilation_cache.SWITCH)}
    env.update(XDG_CACHE_HOME=str(base / "user_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    cache = base / "user_cache" / "mbde_jax" / "xla"
    runs, entries = {}, []
    for name in ("first", "second"):
        runs[name] = subprocess.run([*TRAIN, "--workdir", str(base / name)], capture_output=True, text=True,
                                    env=env, timeout=600)
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
        entries.append(_entries(cache))
    return dict(cache=cache, base=base, env=env, entries=entries, **runs)


@pytest.mark.slow
def test_a_second_process_with_the_same_config_compiles_nothing(two_runs):
    after_first, after_second = two_runs["entries"]
    assert len(after_first) >= 3  # at least the initialisation, the train step and the eval step
    assert after_second == after_first  # every program of the second process was read, none written
    assert f"compilation cache: {two_runs['cache']} (0 entries" in two_runs["first"].stderr
    assert f"compilation cache: {two_runs['cache']} ({len(after_first)} entries" in two_runs["second"].stderr
    first, second = (json.loads((two_runs["base"] / name / "history.json").read_text()) for name in ("first", "second"))
    assert [e["metrics"] for e in first] == [e["metrics"] for e in second]  # a cached program computes the same


def test_an_unusable_cache_directory_only_warns(two_runs, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache directory would go")
    workdir = two_runs["base"] / "first"
    saved = {name: (workdir / name).read_bytes() for name in ("results.json", "history.json")}
    env = dict(two_runs["env"], MBDE_COMPILATION_CACHE=str(blocker / "xla"))
    result = subprocess.run([sys.executable, "-m", "mbde_jax.evaluate", "--workdir", str(workdir)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "compilation cache" in line]
    assert len(warnings) == 1 and "cannot be used" in warnings[0] and "compiling without it" in warnings[0], warnings
    assert "Traceback" not in result.stderr
    assert "top1" in result.stdout or "top-1" in result.stdout, result.stdout[-2000:]
    assert {name: (workdir / name).read_bytes() for name in saved} == saved


def test_only_a_multi_process_cpu_run_under_a_deadlocking_jax_goes_without_the_cache():
    assert compilation_cache.cache_deadlocks({"cpu"}, 2, (0, 12, 1))
    assert compilation_cache.cache_deadlocks({"cpu"}, 4, (0, 13, 0, "dev"))
    assert not compilation_cache.cache_deadlocks({"cpu"}, 2, (0, 12, 0, 1))
    assert not compilation_cache.cache_deadlocks({"cpu"}, 2, (0, 10, 2))
    assert not compilation_cache.cache_deadlocks({"cpu"}, 1, (0, 12, 1))
    assert not compilation_cache.cache_deadlocks({"gpu"}, 2, (0, 12, 1))
