"""The config reference: `<!-- config-reference -->` on a line of its own becomes every field of configs/default.py, by
section, with its default and the comment above it (mbde_jax.config_reference reads them), then which fields
the other configs/*.py set. A field without a comment is a warning naming it, so the build fails on it.
"""

from __future__ import annotations

import pathlib
import re

from sphinx.util import logging

import markdown_text
from mbde_jax import config_reference, config_utils

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
MARKER = re.compile(r"^<!-- config-reference -->$", re.MULTILINE)  # on a line of its own
logger = logging.getLogger(__name__)


def _default(field: config_reference.Field) -> str:
    kind = config_reference.placeholder_type(field)
    return f"unset ({markdown_text.code(kind)})" if kind else markdown_text.code(field.default_source)


def overrides(config_file: pathlib.Path, defaults: dict) -> dict[str, set]:
    """Field -> every value config_file's get_config() gives it, for the fields where one differs from
    default.py's. A config that takes an argument (configs/paper.py) is read for every argument its CELLS table
    names, so a field a cell sets shows all its values."""
    module = config_utils.load_sibling(str(config_file), config_file.stem)
    arguments = list(getattr(module, "CELLS", {})) or [None]
    values: dict[str, set] = {}
    changed: set[str] = set()
    for argument in arguments:
        config = module.get_config() if argument is None else module.get_config(argument)
        for name, value in config_reference.flatten(config.to_dict()):
            values.setdefault(name, set()).add(repr(value))
            if defaults.get(name, object()) != value:
                changed.add(name)
    return {name: values[name] for name in values if name in changed}


def config_markdown(docname: str) -> str:
    default_file = CONFIGS / "default.py"
    fields = config_reference.parse_fields(default_file)
    for name in config_reference.undocumented(fields):
        logger.warning(f"config field {name} has no comment above it in configs/default.py; write what it means "
                       f"there (the config reference shows that comment)", location=docname)
    parts, section = [], None
    rows: list[list[str]] = []
    for field in fields + [None]:
        if field is None or field.section != section:
            if rows:
                parts += [f"## {section}", "", markdown_text.table(["Field", "Default", "What it means"], rows), ""]
            rows = []
            section = field.section if field else None
        if field is not None:
            rows.append([markdown_text.code(field.name), _default(field), markdown_text.text(field.description)])
    defaults = dict(config_reference.flatten(config_utils.load_config(str(default_file)).to_dict()))
    override_rows = []
    for config_file in sorted(CONFIGS.glob("*.py")):
        if config_file.name == "default.py":
            continue
        changed = overrides(config_file, defaults)
        cells = ", ".join(f"{markdown_text.code(name)} = {' or '.join(markdown_text.code(v) for v in sorted(values))}"
                          if len(values) <= 3 else f"{markdown_text.code(name)} ({len(values)} values)"
                          for name, values in changed.items())
        override_rows.append([markdown_text.code(f"configs/{config_file.name}"), cells or "nothing"])
    parts += ["## What the other configs set", "",
              "Each config under `configs/` starts from `configs/default.py` and sets these fields (read from its "
              "`get_config()`; `configs/paper.py` for every cell of its `CELLS` table):", "",
              markdown_text.table(["Config", "Fields it sets"], override_rows), ""]
    return "\n".join(parts)


def setup(app):
    return markdown_text.generate_at_marker(app, MARKER, config_markdown)
