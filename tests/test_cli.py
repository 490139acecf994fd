"""Every command-line tool: one flag library, --help without JAX or TensorFlow, console scripts, one-line errors."""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import pathlib
import re
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


@pytest.mark.parametrize("way_in", ["python", "console script"])
@pytest.mark.parametrize("name", sorted(TOOLS))
def test_help_answers_without_importing_jax_or_tensorflow(name, way_in):
    """Both ways in (`python -m ...` / train.py, and the console script's function) print the tool's flags, exit 0
    and have not imported any heavy library."""
    target, listed_flag = TOOLS[name]
    if way_in == "console script":
        run = f"    from mbde_jax import cli\n    cli.mbde_{name}()\n"
    elif target[0] == "-m":
        run = f"    runpy.run_module({target[1]!r}, run_name='__main__', alter_sys=True)\n"
    else:
        run = f"    runpy.run_path({str(ROOT / target[0])!r}, run_name='__main__')\n"
    probe = ("import runpy, sys, json\n"
             f"sys.argv = [{target[-1]!r}, '--help']\n"
             "try:\n" + run
             + "except SystemExit as e:\n    code = e.code\n"
             f"print('HEAVY ' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)) + ' ' + str(code))\n")
    completed = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    last = completed.stdout.strip().splitlines()[-1]
    assert last == "HEAVY [] 0", completed.stdout[-2000:] + completed.stderr[-2000:]
    assert listed_flag in completed.stdout


def test_python_m_mbde_jax_train_is_train_py():
    completed = subprocess.run([sys.executable, "-m", "mbde_jax.train", "--config", TEST_CONFIG, "--workdir=w", "x"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == ("train.py: error: unexpected arguments ['x']; flags are "
                                                         "given as --name=value.")


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


def test_the_command_list_is_the_console_scripts_and_their_modules_run_them():
    from mbde_jax import cli

    scripts = _console_scripts()
    assert list(cli.COMMANDS) == list(scripts)
    for name, (module, summary) in cli.COMMANDS.items():
        assert scripts[name] == f"mbde_jax.cli:{name.replace('-', '_')}"
        assert importlib.util.find_spec(module) is not None, module
        assert summary and "\n" not in summary, name
    assert cli.COMMANDS["mbde-sweep"][0] == "mbde_jax.sweep" and cli.COMMANDS["mbde-data"][0] == "mbde_jax.data"


def _help_flags(name: str, form: str | None, capsys) -> set[str]:
    """The flags the command's --help lists, i.e. the ones it parses (the help is printed from that FlagValues)."""
    from mbde_jax import cli

    sys_argv, sys.argv = sys.argv, [name, *([form] if form else []), "--help"]
    try:
        with pytest.raises(SystemExit) as exited:
            getattr(cli, name.replace("-", "_"))()
    finally:
        sys.argv = sys_argv
    assert exited.value.code == 0
    return set(re.findall(r"^  --(\w+): ", capsys.readouterr().out, re.MULTILINE))


# The console scripts run their module as `python -m` does; here, in one process, the module may be imported
# already, which runpy points out: harmless for a --help that stops before the module's own code.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
def test_the_reference_of_each_command_holds_exactly_the_flags_it_parses(capsys):
    from absl import flags

    from mbde_jax import cli

    for name in cli.COMMANDS:
        entries = cli.command_reference(name)
        forms = ["train", "eval", "input", "startup"] if name == "mbde-benchmark" else [None]
        assert [invocation for invocation, _, _ in entries] == [" ".join([name, *([f] if f else [])]) for f in forms]
        for form, (invocation, usage, flag_values) in zip(forms, entries):
            assert isinstance(flag_values, flags.FlagValues) and not flag_values.is_parsed(), invocation
            names = set(flag_values)
            assert names == _help_flags(name, form, capsys), invocation
            assert not names & set(flags.FLAGS) and not any(n.startswith("config.") for n in names), invocation
            assert usage.strip() and "\n" in usage, invocation
    sweep = cli.command_reference("mbde-sweep")[0][2]
    assert sweep["slurm_signal_seconds"].default == 300 and sweep["slurm_job_name"].default == "mbde-sweep"
    benchmark = {invocation: usage for invocation, usage, _ in cli.command_reference("mbde-benchmark")}
    assert "mbde-benchmark input --dataset digits" in benchmark["mbde-benchmark input"]
    assert "mbde-benchmark train" not in benchmark["mbde-benchmark input"]
    assert "--compare_xla_option" in benchmark["mbde-benchmark eval"]
    with pytest.raises(KeyError, match="unknown command 'mbde-nope'"):
        cli.command_reference("mbde-nope")


def test_the_reference_imports_nothing_heavy():
    probe = ("import sys\nfrom mbde_jax import cli\n"
             "entries = [e for name in cli.COMMANDS for e in cli.command_reference(name)]\n"
             f"print(len(entries), sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    completed = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.stdout.strip() == "11 []", completed.stdout + completed.stderr[-2000:]
