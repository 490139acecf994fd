"""The benchmark command runs and reports every figure it promises (speed itself is never asserted)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from mbde_jax import benchmark

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "configs" / "test.py")
FIGURES = ("device_kind", "device_count", "platform", "compile_s", "images_per_s", "step_ms_median", "steps",
           "peak_host_memory_gib", "peak_device_memory_gib", "load_average_before", "load_average_after",
           "gflop_per_image", "batch_size", "compute_dtype", "compile_from_cache")


@pytest.mark.parametrize("command,batch_field", [("train", "batch_size"), ("eval", "eval_batch_size")])
def test_step_benchmark_reports_every_figure(tmp_path, capsys, command, batch_field):
    out = tmp_path / f"{command}.json"
    result = benchmark.main([command, "--config", TEST_CONFIG, "--steps", "2", "--warmup", "1", "--json", str(out),
                             "--config.method=okddip", f"--config.{batch_field}=4"])
    assert json.loads(out.read_text()) == result
    for name in FIGURES:
        assert name in result, name
    assert result["benchmark"] == command and result["method"] == "okddip" and result["batch_size"] == 4
    assert result["steps"] == 2 and result["images_per_s"] > 0 and result["compile_s"] > 0
    assert result["device_count"] == 2 and result["platform"] == "cpu"
    assert result["peak_device_memory_gib"] is None  # CPU: only the host's memory
    printed = capsys.readouterr().out
    assert f"benchmark {command}" in printed and "images/s" in printed and "compile" in printed


def test_overrides_are_typed_and_checked(monkeypatch):
    # The benchmark takes --config and --config.<field>= through ml_collections' config_flags, as train.py does.
    monkeypatch.setattr(benchmark, "run", lambda command, **settings: dict(settings, command=command))
    settings = benchmark.main(["train", "--config", TEST_CONFIG, "--steps=5", "--config.num_branches=4",
                               "--config.learning_rate=0.05", "--config.nesterov=false",
                               "--config.shared_trunk=True", "--config.lr_boundaries_epochs=(3, 5)",
                               "--config.compute_dtype=bfloat16"])
    config = settings["config"]
    assert settings["command"] == "train" and settings["steps"] == 5 and settings["config_file"] == TEST_CONFIG
    assert config.num_branches == 4 and config.learning_rate == 0.05 and config.nesterov is False
    assert config.shared_trunk is True and config.lr_boundaries_epochs == (3, 5)
    assert config.compute_dtype == "bfloat16"
    assert settings["overrides"][0] == "--config.num_branches=4" and len(settings["overrides"]) == 6
    with pytest.raises(SystemExit, match="no config field 'no_such_field'"):
        benchmark.main(["train", "--config", TEST_CONFIG, "--config.no_such_field=1"])
    with pytest.raises(SystemExit, match="num_branches"):
        benchmark.main(["train", "--config", TEST_CONFIG, "--config.num_branches=four"])
    with pytest.raises(SystemExit, match="Unknown command line flag 'stepz'"):
        benchmark.main(["train", "--config", TEST_CONFIG, "--stepz=3"])
    with pytest.raises(SystemExit, match="one of train, eval, input, startup; got 'tran'"):
        benchmark.main(["tran", "--config", TEST_CONFIG])


def test_an_invalid_config_is_a_one_line_error_not_a_traceback():
    with pytest.raises(SystemExit, match=r"config.num_branches: method 'okddip' needs .* got 2"):
        benchmark.main(["train", "--config", TEST_CONFIG, "--config.method=okddip", "--config.num_branches=2"])


@pytest.mark.parametrize("on_device", [False, True])
def test_input_benchmark_runs(tmp_path, capsys, on_device):
    args = ["input", "--dataset", "cifar10", "--data", "mock", "--mock_examples", "64", "--batch_size", "8",
            "--num_batches", "10", "--json", str(tmp_path / "input.json")]
    args += ["--input_on_device"] if on_device else []
    benchmark.main(args)
    printed = capsys.readouterr().out
    assert "training images/s" in printed and f"on_device={on_device}" in printed
    figures = json.loads((tmp_path / "input.json").read_text())
    assert figures["on_device"] is on_device and figures["batches"] == 10 and figures["batch_size"] == 8
    # 64 mock examples in batches of 8 over the suite's 2 devices: 8 steps an epoch, both devices used.
    assert figures["examples"] == 64 and figures["device_count"] == 2 and figures["images_per_s"] > 0


@pytest.mark.slow
def test_a_compile_read_from_the_persistent_cache_is_reported_as_such(tmp_path):
    """Run as a command twice over one persistent compilation cache: the second "compile" is a file read."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    results = []
    for run in ("first", "second"):
        out = tmp_path / f"{run}.json"
        completed = subprocess.run(
                [sys.executable, "-m", "mbde_jax.benchmark", "eval", "--config", TEST_CONFIG, "--steps", "1",
                 "--warmup", "0", "--config.eval_batch_size=4", "--json", str(out)],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert completed.returncode == 0, completed.stderr[-2000:]
        results.append(json.loads(out.read_text()))
        assert ("read from the persistent compilation cache" in completed.stdout) is (run == "second")
    assert [r["compile_from_cache"] for r in results] == [False, True]


def test_steps_compared_in_turn_alternate_after_each_ones_warm_up():
    calls = []
    times = benchmark._time_in_turn([lambda: calls.append("a"), lambda: calls.append("b")], steps=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [len(t) for t in times] == [3, 3] and all(s >= 0 for t in times for s in t)


def test_the_compared_figures_are_the_options_and_its_speed_over_the_defaults():
    compared = benchmark._compared({"xla_cpu_enable_fast_math": True}, times=[0.3, 0.2, 0.2],
                                   option_times=[0.1, 0.1, 0.5], batch_size=4)
    assert compared == {"xla_option": "xla_cpu_enable_fast_math", "value": True, "step_ms_median": 100.0,
                        "images_per_s": 40.0, "speedup_over_default": 2.0}


def test_an_xla_option_is_parsed_as_the_type_it_reads_as():
    assert benchmark.parse_xla_option("xla_cpu_enable_fast_math=TRUE") == {"xla_cpu_enable_fast_math": True}
    assert benchmark.parse_xla_option("--xla_cpu_prefer_vector_width=512") == {"xla_cpu_prefer_vector_width": 512}
    assert benchmark.parse_xla_option("x=0.5") == {"x": 0.5}
    assert benchmark.parse_xla_option("xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT") == {
        "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_DEFAULT"}
    for bad in ("xla_cpu_enable_fast_math", "=true"):
        with pytest.raises(SystemExit, match=r"--compare_xla_option takes NAME=VALUE .* got"):
            benchmark.parse_xla_option(bad)


def test_a_compared_xla_option_is_timed_beside_the_default(tmp_path, capsys):
    out = tmp_path / "train.json"
    result = benchmark.main(["train", "--config", TEST_CONFIG, "--steps", "2", "--warmup", "1", "--json", str(out),
                             "--config.batch_size=4",
                             "--compare_xla_option", "xla_cpu_enable_concurrency_optimized_scheduler=true"])
    compared = json.loads(out.read_text())["compared"]
    assert compared["xla_option"] == "xla_cpu_enable_concurrency_optimized_scheduler" and compared["value"] is True
    assert compared["images_per_s"] == pytest.approx(4 / compared["step_ms_median"] * 1e3, rel=1e-3)
    assert compared["speedup_over_default"] == pytest.approx(
        result["step_ms_median"] / compared["step_ms_median"], rel=1e-2)
    assert "timed in turn with the above" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="xla_cpu_scheduler_type=bogus: XLA refused it: .*not a valid enum"):
        benchmark.main(["train", "--config", TEST_CONFIG, "--steps", "1", "--warmup", "0", "--config.batch_size=4",
                        "--compare_xla_option", "xla_cpu_scheduler_type=bogus"])


@pytest.mark.slow
def test_startup_benchmark_reports_each_piece_uncached_cached_and_resumed(tmp_path, capsys):
    out = tmp_path / "startup.json"
    result = benchmark.main(["startup", "--config", TEST_CONFIG, "--config.dataset=digits", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["benchmark"] == "startup" and result["data"] == "real" and result["device_count"] == 2
    assert list(result["runs"]) == ["uncached", "cached", "resumed"]
    for name, run in result["runs"].items():
        ready = run["ready"]
        pieces = set(ready["pieces_s"])
        assert {"data", "evaluation input", "workdir records", "other"} <= pieces, pieces
        assert ("model initialisation" in pieces) == (name != "resumed")
        assert ("restoring step 1" in pieces) == (name == "resumed")  # each run stops after its first step
        assert abs(sum(ready["pieces_s"].values()) - ready["total_s"]) < 0.01
        assert 0 < ready["total_s"] < run["command_to_ready_s"] < run["command_to_first_step_s"]
        assert run["first_step_s"] > 0 and ready["compile_s"] >= 0
    uncached, cached = result["runs"]["uncached"], result["runs"]["cached"]
    assert {"initial_draws", "create_train_state", "train_step"} <= set(uncached["compiled_s"])
    assert uncached["cache_hits"] == 0 and cached["cache_hits"] > 0  # its own new cache, then read from it
    printed = capsys.readouterr().out
    assert "benchmark startup" in printed and "command to ready" in printed and "restoring the checkpoint" in printed
