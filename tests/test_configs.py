"""configs/paper.py (the paper's 15 dataset x architecture cells), config_utils.load_config's 'file.py:arg' form,
and that every config file the docs name exists."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from mbde_jax import config_utils, config_validation

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "configs" / "paper.py")

# What each cell changes on top of configs/default.py (whose defaults are CIFAR-100 / ResNet-32 and the paper's
# training recipe). Written out here, not derived from paper.py, so that a change to a cell shows up as a diff.
EXPECTED_CELLS = {
    "cifar10,resnet32": {"dataset": "cifar10"},
    "cifar10,resnet110": {"dataset": "cifar10", "arch": "resnet110"},
    "cifar10,wrn20_8": {"dataset": "cifar10", "arch": "wrn20_8"},
    "cifar10,vgg16": {"dataset": "cifar10", "arch": "vgg16"},
    "cifar10,densenet40_12": {"dataset": "cifar10", "arch": "densenet40_12"},
    "cifar100,resnet32": {},
    "cifar100,resnet110": {"arch": "resnet110"},
    "cifar100,wrn20_8": {"arch": "wrn20_8"},
    "cifar100,vgg16": {"arch": "vgg16"},
    "cifar100,densenet40_12": {"arch": "densenet40_12"},
    "cinic10,resnet32": {"dataset": "cinic10"},
    "cinic10,resnet110": {"dataset": "cinic10", "arch": "resnet110"},
    "cinic10,wrn20_8": {"dataset": "cinic10", "arch": "wrn20_8"},
    "cinic10,vgg16": {"dataset": "cinic10", "arch": "vgg16"},
    "cinic10,densenet40_12": {"dataset": "cinic10", "arch": "densenet40_12"},
}
VALID_NAMES = ("cifar10", "cifar100", "cinic10", "resnet32", "resnet110", "wrn20_8", "vgg16", "densenet40_12")


def _default():
    return config_utils.load_config(str(ROOT / "configs" / "default.py"))


def _paper_module():
    return config_utils.load_sibling(PAPER, "paper")


@pytest.mark.parametrize("cell", sorted(EXPECTED_CELLS))
def test_paper_cell_differs_from_default_only_as_listed(cell):
    config, default = config_utils.load_config(f"{PAPER}:{cell}"), _default()
    assert list(config) == list(default)  # same fields, same order
    assert [config.get_type(name) for name in config] == [default.get_type(name) for name in default]
    assert {name: config[name] for name in config if config[name] != default[name]} == EXPECTED_CELLS[cell]
    assert (config.dataset, config.arch) == tuple(cell.split(","))
    config_validation.validate(config)


def test_paper_has_exactly_the_expected_cells():
    assert set(_paper_module().CELLS) == set(EXPECTED_CELLS)


@pytest.mark.parametrize("arg, problem", [
    (None, "no dataset and architecture given"),
    ("", "'' is not '<dataset>,<arch>'"),
    ("cifar100", "'cifar100' is not '<dataset>,<arch>'"),
    ("cifar100,resnet32,mbde", "'cifar100,resnet32,mbde' is not '<dataset>,<arch>'"),
    ("cifar1000,resnet32", "unknown dataset 'cifar1000'"),
    ("cifar100,resnet8", "unknown arch 'resnet8'"),  # a backbone of the tests, not of the paper
    ("digits,vgg", "unknown dataset 'digits' and arch 'vgg'"),
])
def test_paper_refuses_a_bad_cell_in_one_line_naming_the_valid_ones(arg, problem):
    with pytest.raises(ValueError) as raised:
        _paper_module().get_config(*(() if arg is None else (arg,)))
    message = str(raised.value)
    assert message.startswith(problem + ": write configs/paper.py:<dataset>,<arch>") and "\n" not in message
    assert all(name in message for name in VALID_NAMES)


def test_load_config_passes_the_text_after_the_colon_to_get_config():
    config = config_utils.load_config(f"{PAPER}:cinic10,wrn20_8", {"num_epochs": 2, "lr_boundaries_epochs": [1]})
    assert (config.dataset, config.arch, config.num_epochs, config.lr_boundaries_epochs) == (
        "cinic10", "wrn20_8", 2, (1,))
    with pytest.raises(ValueError, match="no dataset and architecture given"):
        config_utils.load_config(PAPER)
    assert config_utils.load_config(str(ROOT / "configs" / "demo.py")).dataset == "digits"  # no ':' -> no argument
    assert config_utils.split_config_arg("configs/paper.py:cifar10,vgg16") == ("configs/paper.py", "cifar10,vgg16")
    assert config_utils.split_config_arg("configs/paper.py:") == ("configs/paper.py", "")
    assert config_utils.split_config_arg("configs/demo.py") == ("configs/demo.py", None)


def test_config_name_of_a_cell_is_the_cell():
    assert config_utils.config_name("configs/paper.py:cifar100,resnet32") == "cifar100_resnet32"
    assert config_utils.config_name("/a/b/configs/demo.py") == "demo"
    assert config_utils.config_name("configs/paper.py:") == "paper"


# ml_collections reads a --config file through importlib's deprecated load_module.
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_command_line_parser_gives_the_same_config_as_load_config():
    flag_values = flags.FlagValues()
    argv = ["prog", f"--config={PAPER}:cifar10,vgg16", "--config.method=okddip"]
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    expected = config_utils.load_config(f"{PAPER}:cifar10,vgg16", {"method": "okddip"})
    assert flag_values.config.is_locked and flag_values.config == expected.lock()
    assert flag_values["config"].config_filename == f"{PAPER}:cifar10,vgg16"


@pytest.mark.parametrize("arg, message", [
    ("configs/paper.py", "no dataset and architecture given"),
    ("configs/paper.py:cifar1000,resnet32", "unknown dataset 'cifar1000'"),
])
def test_bad_cell_on_the_command_line_is_one_line(tmp_path, arg, message):
    command = [sys.executable, str(ROOT / "train.py"), "--config", arg, "--workdir", str(tmp_path / "w")]
    env = {name: value for name, value in os.environ.items() if name != "MBDE_DEBUG"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == (
        f"train.py: error: in the command line: flag --config={arg}: {message}: write "
        "configs/paper.py:<dataset>,<arch>, e.g. configs/paper.py:cifar100,resnet32; datasets: cifar10, cifar100, "
        "cinic10; architectures: resnet32, resnet110, wrn20_8, vgg16, densenet40_12")
    assert not (tmp_path / "w").exists()


def test_mbde_debug_shows_the_config_files_traceback(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "--config", "configs/paper.py:x", "--workdir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                               env=dict(os.environ, MBDE_DEBUG="1"))
    assert completed.returncode == 1 and "Traceback" in completed.stderr and "in parse_cell" in completed.stderr


def test_the_training_guide_lists_every_cell_with_its_config_string():
    listed = re.findall(r"^\| `(\w+)` \| `(\w+)` \| `--config configs/paper\.py:(\w+,\w+)` \|$",
                        (ROOT / "docs" / "guides" / "training.md").read_text(), flags=re.MULTILINE)
    assert sorted(f"{dataset},{arch}" for dataset, arch, _ in listed) == sorted(EXPECTED_CELLS)
    assert all(cell == f"{dataset},{arch}" for dataset, arch, cell in listed)


def test_every_config_file_the_docs_and_code_name_exists():
    sources = [ROOT / "README.md", ROOT / "train.py", *(ROOT / "mbde_jax").rglob("*.py"),
               *(ROOT / "configs").glob("*.py")]
    text = "\n".join(path.read_text() for path in sources)
    text += "\n".join("".join(cell["source"]) for notebook in (ROOT / "colab").glob("*.ipynb")
                      for cell in json.loads(notebook.read_text())["cells"])
    named = set(re.findall(r"configs/(\w+)\.py", text))
    assert {"default", "demo", "test", "paper"} <= named
    assert [name for name in sorted(named) if not (ROOT / "configs" / f"{name}.py").exists()] == []


def test_summary_and_benchmark_take_a_paper_cell(monkeypatch):
    from mbde_jax import benchmark

    done = subprocess.run([sys.executable, "-m", "mbde_jax.summary", "--config", "configs/paper.py:cinic10,vgg16"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "vgg16 on cinic10 (10 classes), method mbde, 4 branches"
    monkeypatch.setattr(benchmark, "run", lambda command, **settings: settings)
    config = benchmark.main(["train", "--config", f"{PAPER}:cifar10,wrn20_8", "--config.method=okddip"])["config"]
    assert (config.dataset, config.arch, config.method) == ("cifar10", "wrn20_8", "okddip")
    with pytest.raises(SystemExit, match=r"^mbde_jax.benchmark train: error: in the command line: flag "
                                         r"--config=.*paper\.py:cifar10: 'cifar10' is not '<dataset>,<arch>'"):
        benchmark.main(["train", "--config", f"{PAPER}:cifar10"])
