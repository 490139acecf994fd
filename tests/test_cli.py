"""Every command-line tool: one flag library, --help without JAX or TensorFlow, console scripts, one-line errors."""

from __future__ import annotations

import configparser
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "configs" / "test.py")
# command -> (how `python -m` reaches it, a flag its --help must list)
TOOLS = {
    "train": (["train.py"], "--allow_config_change"),
    "sweep": (["-m", "mbde_jax.sweep"], "--dry_run"),
    "report": (["-m", "mbde_jax.report"], "--out"),
    "evaluate": (["-m", "mbde_jax.evaluate"], "--split"),
    "export": (["-m", "mbde_jax.export"], "--out"),
    "summary": (["-m", "mbde_jax.summary"], "--config"),
    "benchmark": (["-m", "mbde_jax.benchmark"], "input"),
    "data": (["-m", "mbde_jax.data"], "--manual_dir"),
}
HEAVY = ("jax", "tensorflow", "tensorflow_datasets", "flax", "orbax", "matplotlib")


def _console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_every_tool_has_a_console_script_that_exists():
    scripts = _console_scripts()
    assert sorted(scripts) == sorted(f"mbde-{name}" for name in TOOLS)
    for script, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), script


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_help_answers_without_importing_jax_or_tensorflow(name):
    """Both ways in (`python -m ...` / train.py, and the console script's function) print the tool's flags, exit 0
    and have not imported any heavy library."""
    target, listed_flag = TOOLS[name]
    probe = ("import runpy, sys, json\n"
             f"sys.argv = [{target[-1]!r}, '--help']\n"
             "try:\n"
             + (f"    runpy.run_path({str(ROOT / target[0])!r}, run_name='__main__')\n" if target[0] != "-m" else
                f"    runpy.run_module({target[1]!r}, run_name='__main__', alter_sys=True)\n")
             + "except SystemExit as e:\n    code = e.code\n"
             f"print('HEAVY ' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)) + ' ' + str(code))\n")
    completed = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    last = completed.stdout.strip().splitlines()[-1]
    assert last == "HEAVY [] 0", completed.stdout[-2000:] + completed.stderr[-2000:]
    assert listed_flag in completed.stdout


def test_a_console_script_runs_the_same_command(capsys):
    from mbde_jax import cli

    with pytest.raises(SystemExit) as exited:
        sys_argv, sys.argv = sys.argv, ["mbde-summary", f"--config={TEST_CONFIG}", "--config.method=okddip"]
        try:
            cli.mbde_summary()
        finally:
            sys.argv = sys_argv
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "method okddip" in printed and "total trained" in printed


@pytest.mark.parametrize("argv, message", [
    (["train.py", "--config", TEST_CONFIG], "train.py: error: in the command line: flag --workdir=None"),
    (["train.py", "--config", TEST_CONFIG, "--workdir=/tmp/x", "--config.no_field=1"],
     "train.py: error: in the command line: no config field 'no_field'"),
    (["train.py", "--config", TEST_CONFIG, "--workdir=/tmp/x", "extra"], "unexpected arguments ['extra']"),
    (["mbde-report"], "give a sweep root or one or more training workdirs"),
    (["mbde-data", "prepare"], "usage: mbde_jax.data prepare <dataset>"),
    (["mbde-data", "prepare", "mnist"], "unknown dataset 'mnist'; valid datasets are"),
])
def test_bad_command_lines_are_one_line(argv, message):
    from mbde_jax import cli

    command = {"train.py": cli.train, "mbde-report": cli.report, "mbde-data": cli.data}[argv[0]]
    with pytest.raises(SystemExit) as exited:
        command(argv)
    assert message in str(exited.value) and "\n" not in str(exited.value)


def test_commands_can_be_called_twice_in_one_process(capsys):
    """Each call parses into its own flags: a second call neither redefines nor inherits the first's."""
    from mbde_jax import cli

    for method in ("okddip", "one"):
        cli.summary(["mbde-summary", f"--config={TEST_CONFIG}", f"--config.method={method}"])
        assert f"method {method}" in capsys.readouterr().out
