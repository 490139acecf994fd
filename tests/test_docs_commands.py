"""Docs that stay true: every command README.md and docs/**/*.md tell a user to type runs here or is marked.

The convention, the same in README and docs (docs/guides/testing.md, "Documented commands"):
* A command a user types is in a fenced `sh` block, one command per line (a line ending in `\\` continues);
  what it prints is in a `text` block, Python in a `python` block; those never run.
* An `sh` block runs unless the line right before its fence is `<!-- docs-test: REASON (why) -->`, REASON one
  of tests/helpers/docs_commands.MARKER_REASONS (accelerator, cluster, network, ci, interactive, long; `long`
  needs the parenthesis). Any other marker, or an unmarked sh block that cannot run as written, fails.
* The commands of a block run in order in one temporary directory laid out like a clone (links to train.py,
  configs/, slurm/, ...; HOME is that directory), one test per distinct block, so a block that trains and then
  evaluates reads its own workdir. The rewrite (docs_commands.rewrite): configs/demo.py, configs/default.py and
  configs/paper.py:<cell> become configs/test.py shortened to one epoch (TEST_CONFIG_OVERRIDES), whose
  CIFAR-10 is tfds mock data of MOCK_EXAMPLES images a split, and the input benchmark's --mock_examples is at
  most MAX_MOCK_EXAMPLES; the rest runs as written. mbde_jax's tools run in this process as their console
  scripts and `python -m` run them (runpy); other commands run in bash.
* Every command, run or not, and every `python3 ...` / `mbde-...` command quoted inline, is checked
  statically: its flags (mbde_jax.cli.command_reference), --config.<field>s (configs/default.py), --config
  files, and the repository paths and relative links of every page.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import runpy
import subprocess
import sys

import pytest

from helpers import docs_commands as docs

ROOT = docs.ROOT
MOCK_EXAMPLES = 16
# Tools that read no config's dataset: they run on what their own flags name, without the mocked CIFAR-10.
UNMOCKED = ("mbde-data", "mbde-benchmark input", "mbde-report", "mbde-benchmark startup")
BLOCKS = docs.all_blocks()


def _distinct_runnable_blocks() -> dict[tuple[str, ...], list[docs.Block]]:
    """Runnable blocks by their commands: a block the docs repeat (the README's demo, say) runs once."""
    grouped: dict[tuple[str, ...], list[docs.Block]] = {}
    for block in BLOCKS:
        if docs.runnable(block) and docs.block_problem(block) is None:
            grouped.setdefault(block.commands, []).append(block)
    return grouped


RUNNABLE = _distinct_runnable_blocks()


@pytest.fixture(scope="module")
def fields() -> set[str]:
    return docs.config_fields()


def test_every_block_follows_the_convention():
    problems = [problem for block in BLOCKS if (problem := docs.block_problem(block))]
    assert problems == [], "\n".join(problems)
    assert sum(block.language == "sh" for block in BLOCKS) >= 30  # the extraction found the docs' commands


def test_every_documented_command_names_flags_fields_and_files_that_exist(fields):
    problems = []
    for block in BLOCKS:
        if block.language == "sh":
            for command in block.commands:
                problems += docs.static_problems(command, block.name, fields)
    inline = 0
    for document in docs.documents():
        where = f"{document.relative_to(ROOT)} (inline)"
        for command in docs.inline_commands(document.read_text()):
            inline += 1
            problems += docs.static_problems(command, where, fields)
        problems += docs.prose_field_problems(document.read_text(), where, fields)
    assert problems == [], "\n".join(problems)
    assert inline >= 10


def test_every_path_and_relative_link_of_the_docs_exists():
    problems = []
    for document in docs.documents():
        where = str(document.relative_to(ROOT))
        problems += docs.path_problems(docs.prose(document.read_text()), where) + docs.link_problems(document)
    assert problems == [], "\n".join(problems)


def test_ci_runs_the_readme_commands_marked_ci():
    """.ci/run's two sed lines extract the setup and test commands from the README's ci-marked blocks."""
    extraction = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                  if line.startswith(("setup_command=", "test_command="))]
    assert len(extraction) == 2
    script = "\n".join(extraction) + '\nprintf "%s\\n%s\\n" "$setup_command" "$test_command"\n'
    extracted = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    marked = [command for block in BLOCKS if block.path == "README.md" and block.reason == "ci"
              for command in block.commands]
    assert extracted.stdout.splitlines() == marked == ['python3 -m pip install -e ".[test]"',
                                                       "python3 -m pytest -n 2 -q"]


def test_the_convention_checks_catch_what_breaks_it():
    text = "\n".join([
        "```sh", "python3 train.py --config configs/demo.py --workdir <dir>", "```",
        "<!-- docs-test: gpu -->", "```sh", "python3 train.py --config configs/demo.py --workdir w", "```",
        "<!-- docs-test: long -->", "```sh", "python3 train.py --config configs/demo.py --workdir w", "```",
        "<!-- docs-test: network (a download) -->", "```text", "output", "```",
        "```bash", "python3 train.py --config configs/demo.py --workdir w", "```",
        "```sh", "python3 train.py --config configs/demo.py --workdir /shared/run", "```",
        "<!-- docs-test: cluster (sbatch) -->", "```sh", "sbatch slurm/train.sbatch --workdir <dir>", "```",
        "```sh", "python3 -m mbde_jax.sweep --config configs/demo.py \\", "    --workdir w --seeds 0,1", "```"])
    found = docs.blocks(text, "made_up.md")
    problems = [docs.block_problem(block) for block in found]
    assert "placeholders ['<dir>']" in problems[0]
    assert "unknown marker reason 'gpu'" in problems[1]
    assert "needs a parenthesis" in problems[2]
    assert "before a text block" in problems[3]
    assert "a bash block" in problems[4]
    assert "absolute paths ['/shared/run']" in problems[5]
    assert problems[6:] == [None, None]
    assert found[7].commands == ("python3 -m mbde_jax.sweep --config configs/demo.py --workdir w --seeds 0,1",)
    assert [docs.runnable(block) for block in found[6:]] == [False, True]


def test_each_static_check_catches_a_made_up_flag_field_file_and_path(fields):
    def problems(command):
        return docs.static_problems(command, "made_up.md:1", fields)

    assert problems("python3 -m mbde_jax.sweep --config configs/demo.py --workdir w --seeds 0,1") == []
    assert problems("mbde-benchmark input --dataset digits --num_batches 5") == []
    [flag] = problems("python3 -m mbde_jax.sweep --config configs/demo.py --workdir w --seed 0,1")
    assert "`--seed` is not a flag of mbde-sweep" in flag and "--seeds" in flag
    [benchmark_flag] = problems("python3 -m mbde_jax.benchmark train --config configs/demo.py --dataset digits")
    assert "`--dataset` is not a flag of mbde-benchmark train" in benchmark_flag
    [field] = problems("python3 train.py --config configs/demo.py --workdir w --config.num_epoch=1")
    assert "`--config.num_epoch` is not a field" in field
    assert problems("python3 train.py --config configs/demo.py --workdir w --config.num_epochs=1") == []
    missing = problems("python3 train.py --config configs/demo2.py --workdir w")
    assert missing and all("configs/demo2.py does not exist" in problem for problem in missing)
    [bad_cell] = problems("python3 train.py --config configs/paper.py:cifar100,resnet33 --workdir w")
    assert "--config configs/paper.py:cifar100,resnet33 does not load" in bad_cell
    [launched] = problems("srun -n 2 python3 train.py --config configs/test.py --workdir w --num_process=2")
    assert "`--num_process` is not a flag of mbde-train" in launched
    [batch_script] = problems("sbatch -n 2 slurm/train.sbatch --config configs/test.py --workdir w --config.seeds=1")
    assert "`--config.seeds` is not a field" in batch_script
    [looped] = problems("for i in 0 1; do python3 train.py --config configs/test.py --workdir w$i --proces_id=$i "
                        "> log.$i 2>&1 & done; wait")
    assert "`--proces_id` is not a flag of mbde-train" in looped
    [prose_field] = docs.prose_field_problems("e.g. `--config.num_branch=5 --config.seed=1`, `--config.<field>`",
                                              "made_up.md", fields)
    assert "`--config.num_branch` is not a field" in prose_field
    [path] = problems("sbatch slurm/train2.sbatch")
    assert "the path slurm/train2.sbatch does not exist" in path
    assert docs.path_problems("see mbde_jax/experiment.resolve and tests/test_docs_commands.py", "x") == []


def test_a_link_to_a_missing_heading_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Faults: what happens\n\n[ok](#faults-what-happens) [b](b.md#x)\n"
                                   "[gone](#faults) [none](c.md)\n")
    (tmp_path / "b.md").write_text("# B\n\n## X\n")
    problems = docs.link_problems(tmp_path / "a.md", root=tmp_path)
    assert len(problems) == 2
    assert "has no heading #faults" in problems[0] and "c.md, which does not exist" in problems[1]


def test_the_rewrite_puts_every_heavy_config_on_the_test_config():
    assert docs.rewrite(["--config", "configs/paper.py:cifar100,resnet32", "--config.method=okddip",
                         "--config=configs/demo.py", "--workdir", "configs/demo.py", "--mock_examples", "20000",
                         "--mock_examples=500"]) == [
        "--config", "configs/test.py", *docs.TEST_CONFIG_OVERRIDES, "--config.method=okddip",
        "--config=configs/test.py", *docs.TEST_CONFIG_OVERRIDES, "--workdir", "configs/demo.py",
        "--mock_examples", "1000", "--mock_examples=500"]


def _clone(directory: pathlib.Path) -> None:
    for entry in docs.CLONE_ENTRIES:
        (directory / entry).symlink_to(ROOT / entry)


def _run_tool(call: docs.ToolCall, command: str, clone: pathlib.Path, monkeypatch) -> None:
    from mbde_jax import cli
    from mbde_jax.data import testing

    args = docs.rewrite(call.args)
    with monkeypatch.context() as scope:
        for name, value in call.env:
            scope.setenv(name, value)
        scope.setattr(sys, "argv", [call.program[-1], *args])
        if call.invocation in UNMOCKED:
            mocked = contextlib.nullcontext()
        else:
            mocked = testing.mocked_dataset("cifar10", num_examples=MOCK_EXAMPLES, metadata_dir=str(clone / ".meta"))
        code = 0
        with mocked:
            try:
                if call.program[0] in cli.COMMANDS:  # the console script
                    getattr(cli, call.name.replace("-", "_"))()
                elif call.program[-1].endswith("train.py"):
                    runpy.run_path(str(clone / call.program[-1]), run_name="__main__")
                else:
                    runpy.run_module(call.program[-1], run_name="__main__", alter_sys=True)
            except SystemExit as stopped:
                code = stopped.code
    assert code in (None, 0), f"`{command}` (run as {' '.join(call.program + tuple(args))}) exited with {code}"


def _run_shell(command: str, clone: pathlib.Path) -> None:
    env = dict(os.environ, HOME=str(clone), PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (f"`{command}` exited with {done.returncode}:\n"
                                  f"{done.stdout[-3000:]}{done.stderr[-3000:]}")


# A `python -m` command runs here in this process, where its module may be imported already (by an earlier block or
# test); runpy points that out. Harmless here, and a user's fresh `python -m` process never meets it.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
@pytest.mark.parametrize("commands", list(RUNNABLE),
                         ids=["+".join(block.name for block in places) for places in RUNNABLE.values()])
def test_documented_block_runs(commands, tmp_path, monkeypatch):
    _clone(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for command in commands:
        call = docs.tool_call(command)
        if call is None:
            _run_shell(command, tmp_path)
        else:
            _run_tool(call, command, tmp_path, monkeypatch)
