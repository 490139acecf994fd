"""What every command-line tool parses its flags with: absl flags, ml_collections config_flags for --config and
--config.<field>=<value>.

Each tool defines its own flags (mbde_jax.train, mbde_jax.sweep_flags, ...; mbde_jax.cli lists them) through
the functions here; this module imports no tool and nothing heavy, so `--help` and a mistyped flag answer at
once: each command imports JAX, TensorFlow and tfds only after its flags are parsed. Each call parses into its
own absl FlagValues (with absl's logging flags), so commands can also be called from Python, more than once,
with an argv list.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags
from absl import logging as absl_logging

from mbde_jax import cli_errors, logs
from mbde_jax import workdir as run_files

Flags = flags.FlagValues
# A tool's flag definitions: defines them on the given FlagValues, returns the holders it reads them through.
Define = Callable[[Flags], Any]


def parse(tool: str, doc: str, argv: Sequence[str], define: Define) -> tuple[Any, list[str]]:
    """Defines the tool's flags on a fresh FlagValues, parses argv (argv[0] is the program) and returns
    (what `define` returned, the positional arguments). --help prints the usage and exits 0; a bad flag is
    one line (exit 1)."""
    flag_values = flags.FlagValues()
    flag_values.append_flag_values(flags.FLAGS)  # absl's own (--verbosity, --logtostderr, ...)
    defined = define(flag_values)
    if any(arg in ("--help", "-h", "--helpfull", "-?") for arg in argv[1:]):
        print(f"{inspect.cleandoc(doc)}\n\nflags:\n{usage(flag_values)}")
        raise SystemExit(0)
    positional = cli_errors.parse_flags_or_exit(tool, list(argv), flag_values)[1:]
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl logging reads its flags from here
    absl_logging.use_absl_handler()
    logs.quiet_console()
    if flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = 0  # INFO, as absl's app.run does: the progress and evaluation lines are INFO
    return defined, positional


def _own_flag_names(flag_values: Flags) -> list[str]:
    """The flags the tool defined: absl's logging flags, short names and per-field config overrides left out."""
    return [name for name in sorted(set(flag_values) - set(flags.FLAGS))
            if flag_values[name].name == name and not name.startswith("config.")]


def usage(flag_values: Flags) -> str:
    """One entry per flag this tool defines, with its default."""
    lines = []
    for name in _own_flag_names(flag_values):
        flag = flag_values[name]
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        lines.append(f"  --{name}: {flag.help}{default}")
    return "\n".join(lines)


def reference(invocation: str, doc: str, define: Define) -> tuple[str, str, Flags]:
    """(invocation, usage text, a FlagValues holding exactly the flags `define` defines, not parsed) for the
    CLI reference (mbde_jax.cli.command_reference)."""
    defined = flags.FlagValues()
    define(defined)
    own = flags.FlagValues()
    for name in _own_flag_names(defined):
        own[name] = defined[name]
    return invocation, inspect.cleandoc(doc), own


def config_flag(flag_values: Flags, argv: Sequence[str]):
    """The required --config flag; its --config.<field> overrides are the ones `argv` gives."""
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

    from mbde_jax import config_utils  # pylint: disable=import-outside-toplevel

    holder = config_flags.DEFINE_config_file(
        "config", None, config_utils.CONFIG_FLAG_HELP + " Fields are overridden with --config.<field>=<value>.",
        flag_values=flag_values, lock_config=True, sys_argv=list(argv))
    flags.mark_flag_as_required("config", flag_values)
    return holder


def before_jax() -> None:
    """Once the flags are parsed, before the command's heavy imports: TensorFlow imported quietly, and JAX's
    persistent compilation cache switched on (mbde_jax.compilation_cache)."""
    logs.import_tensorflow_quietly()
    from mbde_jax import compilation_cache  # pylint: disable=import-outside-toplevel

    compilation_cache.enable()


def no_positional(tool: str, positional: list[str]) -> None:
    if positional:
        raise SystemExit(f"{tool}: error: unexpected arguments {positional}; flags are given as --name=value.")


def workdir_tool(tool: str, invocation: str, doc: str, extra: Callable[[Flags], dict]):
    """(reference, parse) of a tool that reads a training workdir: the required --workdir plus `extra`'s flags,
    no positional arguments. parse(argv) returns {name: value} once JAX's set-up (before_jax) is done; a
    --workdir that holds no readable config.json is one line before that, without the seconds TensorFlow's
    import takes."""
    def define(fv: Flags) -> dict:
        holders = {"workdir": flags.DEFINE_string("workdir", None, "A training workdir (holds config.json and "
                                                  "checkpoints/).", flag_values=fv), **extra(fv)}
        flags.mark_flag_as_required("workdir", fv)
        return holders

    def reference_list() -> list[tuple[str, str, Flags]]:
        return [reference(invocation, doc, define)]

    def parse_values(argv: Sequence[str]) -> dict:
        holders, positional = parse(tool, doc, argv, define)
        no_positional(tool, positional)
        with cli_errors.one_line_errors(tool):
            run_files.load_config(holders["workdir"].value)
        before_jax()
        return {name: holder.value for name, holder in holders.items()}

    return reference_list, parse_values


def program_argv(argv: Sequence[str] | None) -> list[str]:
    """argv as sys.argv has it (argv[0] the program); None: sys.argv itself."""
    return list(argv or sys.argv)


def exit_status(result: Any) -> int:
    """A command's result as its exit status: an int it returns is the status, anything else 0."""
    return result if isinstance(result, int) else 0
