"""What a user reads when things break: one line that says what happened, what was kept and what to do, no
traceback (MBDE_DEBUG=1 shows it), and nothing already saved changed. Each run is train.py (the real command
line, in a fresh process, so stderr is what a user sees, C++ threads included) on configs/test.py with the
bundled digits data, one epoch of 48 steps (the first 384 examples)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from helpers.small_disk import small_disk
from mbde_jax import workdir as workdir_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ["train.py", "--config", "configs/test.py", "--config.dataset=digits", "--config.train_examples=384",
         "--config.num_epochs=1",
         "--config.lr_boundaries_epochs=(1,)", "--config.checkpoint_every_minutes=0"]
# The user's environment: no MBDE_DEBUG, and TensorFlow's C++ warnings at their default level (the suite's
# conftest raises it, which would hide the very lines these tests are about).
USER_ENV = {k: v for k, v in os.environ.items() if k not in ("MBDE_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env or USER_ENV)


def _train(workdir: pathlib.Path, *overrides: str) -> subprocess.CompletedProcess:
    return _run(TRAIN + ["--workdir", str(workdir), *overrides])


def _said(done: subprocess.CompletedProcess, most_lines: int = 8) -> list[str]:
    """stderr without the progress lines (INFO): what the run said went wrong. No traceback, and no more than
    `most_lines` lines in all (a run that trains to its end logs 13 progress lines)."""
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr[-3000:]
    assert len(lines) <= most_lines, done.stderr[-3000:]
    return [line for line in lines if not line.startswith("I ")]


def _digests(directory: pathlib.Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _steps(workdir: pathlib.Path) -> list[str]:
    return sorted(path.name for path in (workdir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> pathlib.Path:
    """A finished run with checkpoints at steps 24 and 48."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    done = _train(workdir, "--config.checkpoint_every_steps=24")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(workdir) == ["24", "48"]
    return workdir


def test_rerunning_a_finished_run_changes_nothing(finished_run):
    before = _digests(finished_run)
    done = _train(finished_run, "--config.checkpoint_every_steps=24")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _said(done, most_lines=3) == []  # nothing went wrong: a progress line or two at most
    (line,) = [line for line in done.stderr.splitlines() if f"{finished_run} has finished already" in line]
    assert "nothing was trained, evaluated or rewritten" in line
    assert _digests(finished_run) == before  # results.json, history.json, checkpoints: byte for byte


def test_a_latest_checkpoint_without_its_manifest_falls_back_in_one_line(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    (copy / "checkpoints" / "48" / "state" / "manifest.ocdbt").unlink()
    (copy / "results.json").unlink()  # else the run is finished: nothing would read the checkpoint
    kept = _digests(copy / "checkpoints" / "24")
    done = _train(copy, "--config.checkpoint_every_steps=24")
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = _said(done, most_lines=15)
    assert "checkpoint step 48" in line and "cannot be read" in line and "checkpoints_unreadable" in line
    assert "resumed from step 24" in done.stderr
    assert _digests(copy / "checkpoints" / "24") == kept
    assert [path.name.split(".")[0] for path in (copy / "checkpoints_unreadable").iterdir()] == ["48"]
    final = (json.loads((run / "results.json").read_text())["final"]["metrics"] for run in (finished_run, copy))
    assert next(final) == next(final)  # retrained from step 24: the same numbers


@pytest.mark.parametrize("free_bytes, overrides, first_words, steps_left", [
    # At the start: the TensorBoard events fill the disk before the first checkpoint.
    (12_000, [], "train.py: error: No space left on device: the TensorBoard events could not be written (", []),
    # During a checkpoint (~1.8 MB each): steps 12 and 24 fit, 36 does not.
    (4_300_000, ["--config.checkpoint_every_steps=12"], "train.py: error: checkpoint step 36 could not be "
     "written in {workdir}/checkpoints (no space left on the device); the partial save was removed and the next "
     "run resumes from step 24, the latest checkpoint, which is intact.", ["12", "24"]),
], ids=["at_the_start", "during_a_checkpoint"])
def test_a_full_disk_is_one_line_and_keeps_what_was_saved(tmp_path, free_bytes, overrides, first_words,
                                                          steps_left):
    with small_disk(tmp_path / "disk", free_bytes) as disk:
        workdir = disk / "run"
        done = _train(workdir, *overrides)
        assert done.returncode == 1, done.stderr[-3000:]
        (line,) = _said(done)
        assert line.startswith(first_words.format(workdir=workdir)), line
        assert "run the same command again" in line
        assert _steps(workdir) == steps_left  # no partial save left behind
        if steps_left:
            again = _run(["-m", "mbde_jax.evaluate", "--workdir", str(workdir), "--step", "24"])
            assert again.returncode == 0, again.stderr[-3000:]  # the kept checkpoint reads


def test_a_run_file_that_does_not_fit_is_named_and_the_old_one_kept(tmp_path):
    with small_disk(tmp_path / "disk", 8_000) as disk:
        run = disk / "run"
        run.mkdir()
        workdir_files.write_history(str(run), [])
        with pytest.raises(OSError) as raised:  # the write or the flush at close runs out of space
            workdir_files.write_history(str(run), [{"epoch": 1, "note": "x" * 50_000}])
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(run / "history.json")
        assert json.loads((run / "history.json").read_text()) == []
        assert sorted(path.name for path in run.iterdir()) == ["history.json"]  # no partial .tmp left


def test_a_config_file_that_does_not_load_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    argv = ["train.py", "--config", str(bad), "--workdir", str(tmp_path / "run")]
    done = _run(argv)
    assert done.returncode == 1
    assert _said(done) == [f"train.py: error: --config {bad} cannot be loaded: a syntax error at line 1: invalid "
                           f"syntax: def get_config(:. Fix the file; nothing was run (MBDE_DEBUG=1 shows the "
                           f"traceback)."]
    assert not (tmp_path / "run").exists()
    bad.write_text("def get_config():\n    return undefined_name\n")
    assert "NameError: name 'undefined_name' is not defined at line 2 (return undefined_name)" in _run(argv).stderr
    debug = _run(argv, env=dict(USER_ENV, MBDE_DEBUG="1"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.parametrize("argv, line", [
    (["-m", "mbde_jax.report", "{tmp}"], "mbde_jax.report: error: no run (a directory with config.json) under "
                                         "['{tmp}'] (MBDE_DEBUG=1 shows the traceback)"),
    (["-m", "mbde_jax.summary", "--config", "configs/test.py", "--config.arch=nope"],
     "mbde_jax.summary: error: config.arch='nope': must be one of"),
])
def test_a_tool_error_is_its_one_line_without_the_tensorflow_banner(tmp_path, argv, line):
    done = _run([part.format(tmp=tmp_path) for part in argv])
    assert done.returncode == 1
    (said,) = done.stderr.strip().splitlines()
    assert said.startswith(line.format(tmp=tmp_path)), done.stderr
