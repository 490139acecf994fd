"""Helpers for ml_collections config files."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import types

# Help of every tool's --config flag: ml_collections passes the text after the first ':' to get_config.
CONFIG_FLAG_HELP = ("Path to a config file (configs/*.py); text after a ':' is passed to its get_config, e.g. "
                    "configs/paper.py:cifar100,resnet32.")


def load_sibling(config_file: str, name: str) -> types.ModuleType:
    """Imports the config module `name`.py that sits beside `config_file` (usually `__file__`).

    Config files are loaded by path (ml_collections' --config), so `configs/` is not a package on sys.path;
    this lets a variant build on configs/default.py from any working directory.
    """
    path = pathlib.Path(config_file).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_mbde_jax_config_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load config module {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_config_arg(config_file: str) -> tuple[str, str | None]:
    """'configs/paper.py:cifar100,resnet32' -> ('configs/paper.py', 'cifar100,resnet32'); no ':' -> (path, None).

    Splits at the first ':', as ml_collections' --config does, so a notebook or script names a config exactly
    as the command line does.
    """
    path, colon, arg = config_file.partition(":")
    return path, (arg if colon else None)


def config_name(config_file: str) -> str:
    """A short name of a config for workdirs: the file's stem ('demo'), or for a parameterised config its
    argument with every other character than letters, digits, '-' and '_' made '_' ('cifar100_resnet32')."""
    path, arg = split_config_arg(config_file)
    if arg is None:
        return pathlib.Path(path).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "_", arg).strip("_") or pathlib.Path(path).stem


def load_config(config_file: str, overrides: dict | None = None):
    """`get_config()` of a config file, with flattened overrides applied ({'num_epochs': 2, ...}).

    `config_file` may carry an argument as on the command line, 'configs/paper.py:cifar100,resnet32': the text
    after the first ':' is passed to get_config. For notebooks and scripts; the command-line tools take
    --config.<field>=<value> instead.
    """
    file, arg = split_config_arg(config_file)
    path = pathlib.Path(file).resolve()
    module = load_sibling(str(path), path.stem)
    config = module.get_config() if arg is None else module.get_config(arg)
    if overrides:  # JSON (a notebook's parameters) has lists where configs hold tuples
        config.update_from_flattened_dict({name: tuple(value) if isinstance(value, list) else value
                                           for name, value in overrides.items()})
    return config
