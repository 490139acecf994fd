"""Helpers for ml_collections config files."""

from __future__ import annotations

import importlib.util
import pathlib
import types


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


def load_config(config_file: str, overrides: dict | None = None):
    """`get_config()` of a config file, with flattened overrides applied ({'num_epochs': 2, ...}).

    For notebooks and scripts; the command-line tools take --config.<field>=<value> instead.
    """
    path = pathlib.Path(config_file).resolve()
    config = load_sibling(str(path), path.stem).get_config()
    if overrides:  # JSON (a notebook's parameters) has lists where configs hold tuples
        config.update_from_flattened_dict({name: tuple(value) if isinstance(value, list) else value
                                           for name, value in overrides.items()})
    return config
