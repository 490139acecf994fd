"""Checks a config before anything is built or compiled, naming the field at fault and what to do.

`FIELDS` lists every field configs/default.py defines, with its type and the values it accepts (a test keeps
the two in step). ml_collections already refuses unknown fields and wrong types given on the command line;
this also catches them in config files, and checks ranges and names.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections

from mbde_jax import losses, methods
from mbde_jax import workdir as run_files
from mbde_jax.data import info as dataset_info
from mbde_jax.models import BACKBONES

Check = Callable[[Any], str | None]  # returns what is wrong, or None


class ConfigError(ValueError):
    """A config (or a config/workdir combination) that cannot run; the message names the field and the fix."""


def _positive(value) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value > 0 else "must be > 0"


def _non_negative(value) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value >= 0 else "must be >= 0"


def _at_least(low) -> Check:
    return lambda value: None if value >= low else f"must be >= {low}"


def _unit_interval(closed_high: bool) -> Check:
    def check(value):
        ok = 0 <= value <= 1 if closed_high else 0 <= value < 1
        return None if ok else f"must be in [0, 1{']' if closed_high else ')'}"
    return check


def _one_of(valid) -> Check:
    return lambda value: None if value in valid else f"must be one of {sorted(valid)}"


def _boundaries(value) -> str | None:
    if any(not isinstance(v, int) or isinstance(v, bool) for v in value):
        return "must be a tuple of whole epoch numbers"
    if any(v < 1 for v in value) or list(value) != sorted(set(value)):
        return "must be strictly increasing epoch numbers >= 1, e.g. (150, 225)"
    return None


# How config.num_seeds > 1 runs its seed axis (mbde_jax.seed_group resolves 'auto').
SEED_EXECUTIONS = ("auto", "vmap", "loop")

# name -> (accepted types, check or None, may be None)
FIELDS: dict[str, tuple[tuple[type, ...], Check | None, bool]] = {
    "dataset": ((str,), _one_of(dataset_info.DATASETS), False),
    "data_dir": ((str,), None, True),
    "cinic10_train_splits": ((str,), _one_of(("train", "train+validation")), False),
    "train_examples": ((int,), _non_negative, False),
    "download": ((bool,), None, False),
    "arch": ((str,), _one_of(BACKBONES), False),
    "num_branches": ((int,), _at_least(1), False),
    "shared_trunk": ((bool,), None, True),
    "branch_execution": ((str,), _one_of(("auto", "vmap", "unrolled", "scan")), False),
    "compute_dtype": ((str,), _one_of(("float32", "bfloat16")), False),
    "dropout_rate": ((float, int), _unit_interval(closed_high=False), False),
    "method": ((str,), _one_of(methods.METHODS), False),
    "temperature": ((float, int), _positive, False),
    "kd_weight": ((float, int), _non_negative, False),
    "rampup_epochs": ((int,), _non_negative, False),
    "cd_weight": ((float, int), _non_negative, False),
    "cd_variant": ((str,), _one_of(losses.CD_VARIANTS), False),
    "kl_teacher_epsilon": ((float, int), _non_negative, False),
    "detach_targets": ((bool,), None, False),
    "attention_reduction": ((int,), _at_least(1), False),
    "ffm_residual": ((bool,), None, False),
    "seed": ((int,), _non_negative, False),
    "num_seeds": ((int,), _at_least(1), False),
    "seed_execution": ((str,), _one_of(SEED_EXECUTIONS), False),
    "batch_size": ((int,), _positive, False),
    "num_epochs": ((int,), _positive, False),
    "learning_rate": ((float, int), _positive, False),
    "lr_boundaries_epochs": ((tuple,), _boundaries, False),
    "lr_decay_factor": ((float, int), lambda v: None if 0 < v <= 1 else "must be in (0, 1]", False),
    "momentum": ((float, int), _unit_interval(closed_high=False), False),
    "nesterov": ((bool,), None, False),
    "weight_decay": ((float, int), _non_negative, False),
    "cpu_devices": ((int,), _non_negative, False),
    "input_on_device": ((bool,), None, True),
    "eval_batch_size": ((int,), _positive, False),
    "eval_every_epochs": ((int,), _at_least(1), False),
    "checkpoint_every_epochs": ((int,), _at_least(1), False),
    "checkpoint_every_steps": ((int,), _non_negative, False),
    "checkpoint_every_minutes": ((float, int), _non_negative, False),
    "keep_checkpoints": ((int,), _at_least(1), False),
    "log_every_steps": ((int,), _at_least(1), False),
    "log_every_seconds": ((float, int), _positive, False),
}


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises a ConfigError naming the first field that is unknown, missing, of the wrong type or out of range."""
    try:
        _validate(config)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _validate(config: ml_collections.ConfigDict) -> None:
    for name in config:
        if name not in FIELDS:
            raise ConfigError(f"config.{name}: no such field. Valid fields are listed in configs/default.py "
                             f"(see the README's config reference).")
    for name, (types, check, nullable) in FIELDS.items():
        if name not in config:
            raise ConfigError(f"config.{name}: missing. Build configs on configs/default.py's get_config().")
        value = config[name]
        if value is None:
            if nullable:
                continue
            raise ConfigError(f"config.{name}: must be set (got None).")
        # bool is an int subclass: only accept it where bool is meant.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"config.{name}: expected {expected}, got {type(value).__name__} {value!r}.")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"config.{name}={value!r}: {problem}.")
    late = [epoch for epoch in config.lr_boundaries_epochs if epoch > config.num_epochs]
    if late:
        raise ConfigError(f"config.lr_boundaries_epochs={tuple(config.lr_boundaries_epochs)!r}: epoch(s) {late} lie "
                          f"past config.num_epochs={config.num_epochs}, so that drop would never happen; give "
                          f"epochs in [1, {config.num_epochs}] (or an empty tuple for a constant rate).")
    _check_branch_count(methods.METHODS[config.method], config.num_branches)


def _check_branch_count(method: methods.Method, requested: int) -> None:
    """The method's own limits on config.num_branches (a method with a fixed count ignores the field)."""
    if method.fixed_branches is None and requested < method.min_branches:
        need = (f"at least {method.min_branches - 1} peers plus the group leader"
                if method.has_leader else f"at least {method.min_branches} branches")
        raise ConfigError(f"config.num_branches: method {method.name!r} needs {need}, i.e. num_branches >= "
                          f"{method.min_branches}; got {requested}.")


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir` and checks this process can write there (run_files.prepare); ConfigError, naming
    the directory and what to do, when it cannot."""
    try:
        run_files.prepare(workdir)
    except OSError as error:
        raise ConfigError(f"--workdir {workdir}: cannot be used ({error.strerror or error}); give a directory this "
                          f"user can create and write.") from None
