"""The CLI reference: `<!-- cli-reference -->` on a line of its own becomes every console command of
mbde_jax.cli.COMMANDS with its usage and a table of its flags (name, type, default, help), read from the absl
flags themselves (mbde_jax.cli.command_reference), so the page cannot drift from what `--help` says.
"""

from __future__ import annotations

import re

from sphinx.util import logging

import markdown_text
from mbde_jax import cli

MARKER = re.compile(r"^<!-- cli-reference -->$", re.MULTILINE)  # on a line of its own
logger = logging.getLogger(__name__)


def _type(flag) -> str:
    values = getattr(flag.parser, "enum_values", None)
    if values:
        return "one of " + ", ".join(markdown_text.code(value) for value in values)
    return markdown_text.text(flag.flag_type())


def flag_rows(flag_values) -> list[list[str]]:
    """One row per flag (short names are not flags of their own), in name order."""
    rows = []
    for name in sorted(flag_values):
        flag = flag_values[name]
        if flag.name != name:
            continue
        default = "required" if flag.default is None and flag.name == "config" else (
            "unset" if flag.default is None else markdown_text.code(flag.default_as_str.strip("'")))
        short = f" (`-{flag.short_name}`)" if flag.short_name else ""
        rows.append([f"{markdown_text.code('--' + name)}{short}", _type(flag), default,
                     markdown_text.text(flag.help or "")])
    return rows


def cli_markdown(docname: str) -> str:
    parts = [markdown_text.table(["Command", "What it does"],
                                 [[f"[{markdown_text.code(name)}](#{name})", markdown_text.text(summary)]
                                  for name, (_, summary) in cli.COMMANDS.items()]), ""]
    for name, (module, summary) in cli.COMMANDS.items():
        parts += [f"## {name}", "", f"{markdown_text.text(summary)} The same command: "
                  f"{markdown_text.code('python -m ' + module)}.", ""]
        forms = cli.command_reference(name)
        for invocation, usage, flag_values in forms:
            if len(forms) > 1:
                parts += [f"### {invocation}", ""]
            rows = flag_rows(flag_values)
            if not rows:
                logger.warning(f"{invocation} has no flags in mbde_jax.cli.command_reference", location=docname)
            parts += [markdown_text.fenced(usage, css_class="usage-text"), "",
                      markdown_text.table(["Flag", "Type", "Default", "Help"], rows), ""]
    return "\n".join(parts)


def setup(app):
    return markdown_text.generate_at_marker(app, MARKER, cli_markdown)
