"""The API reference: every module of mbde_jax on the page of its area, documented by autodoc from its docstrings.

A page holds the marker `<!-- api-area: NAME -->` on a line of its own; when Sphinx reads the page, the marker
becomes a table of the area's modules and one section per module. The modules are found by walking the package,
so a new module is on the site without editing a page: one that no area's patterns match is listed under "Other
modules" of the last area. An area no page shows is a warning (the build fails).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import inspect
import pkgutil
import re
import sys

from sphinx.util import logging
from sphinx.util.inspect import stringify_signature

import markdown_text

PACKAGE = "mbde_jax"
# area -> module patterns; a module goes to the first area one of whose patterns matches. The page's title is
# its own first heading.
AREAS: dict[str, tuple[str, ...]] = {
    "models": ("mbde_jax.models", "mbde_jax.models.*"),
    "methods": ("mbde_jax.methods", "mbde_jax.losses", "mbde_jax.optim"),
    "training": ("mbde_jax.experiment", "mbde_jax.training", "mbde_jax.trainer", "mbde_jax.seed_group",
        "mbde_jax.train_metrics", "mbde_jax.eval_metrics", "mbde_jax.lifecycle", "mbde_jax.run_record",
        "mbde_jax.progress", "mbde_jax.tensorboard_scalars", "mbde_jax.sharding", "mbde_jax.distributed",
        "mbde_jax.startup", "mbde_jax.compilation_cache", "mbde_jax.logs"),
    "data": ("mbde_jax.data", "mbde_jax.data.*"),
    "runs": ("mbde_jax.checkpoint", "mbde_jax.workdir", "mbde_jax.provenance", "mbde_jax.evaluate", "mbde_jax.export",
        "mbde_jax.summary"),
    "sweeps": ("mbde_jax.sweep", "mbde_jax.sweep_status", "mbde_jax.slurm", "mbde_jax.runs", "mbde_jax.report",
        "mbde_jax.report_plots"),
    "tools": ("mbde_jax.cli", "mbde_jax.command_line", "mbde_jax.cli_errors", "mbde_jax.train", "mbde_jax.*_flags",
        "mbde_jax.benchmark", "mbde_jax.startup_benchmark", "mbde_jax.config_utils", "mbde_jax.config_validation",
        "mbde_jax.config_reference"),
}
# on a line of its own: the same text quoted inside a sentence is only text
_MARKER = re.compile(r"^<!--\s*api-area:\s*(?P<area>[\w-]+)\s*-->$", re.MULTILINE)
logger = logging.getLogger(__name__)


def modules() -> list[str]:
    """Every module of the package, sub-packages included; `__main__` modules (scripts) are left out."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE] + [info.name for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}.")]
    return sorted(name for name in names if not name.endswith(".__main__"))


def area_of(module: str) -> str | None:
    """The first area one of whose patterns matches `module`, or None."""
    return next((name for name, patterns in AREAS.items()
                 if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns)), None)


def _first_line(module: str) -> str:
    doc = importlib.import_module(module).__doc__ or ""
    return doc.strip().split("\n\n")[0]


def _section(module: str) -> str:
    return f"## {markdown_text.code(module)}\n\n```{{eval-rst}}\n.. automodule:: {module}\n```\n"


def area_markdown(area: str) -> str:
    """The generated part of area `area`'s page: a table of its modules, then a section for each."""
    found = modules()
    own = [module for module in found if area_of(module) == area and module != PACKAGE]
    others = [module for module in found if area_of(module) is None and module != PACKAGE]
    last = list(AREAS)[-1]
    rows = [[f"{{py:mod}}`{module}`", markdown_text.text(_first_line(module))]
            for module in own + (others if area == last else [])]
    parts = [markdown_text.table(["Module", "What it is"], rows), ""] + [_section(module) for module in own]
    if area == last and others:
        parts += ["## Other modules", "", "Modules that no area names yet (AREAS in docs/_ext/api_reference.py).", ""]
        parts += [_section(module).replace("## ", "### ", 1) for module in others]
    return "\n".join(parts)


def _source_read(app, docname: str, source: list[str]) -> None:
    def replace(match: re.Match) -> str:
        area = match["area"]
        if area not in AREAS:
            logger.warning(f"api-area {area!r} is no area of docs/_ext/api_reference.py; the areas: "
                           f"{', '.join(AREAS)}", location=docname)
            return ""
        shown = app.env.api_areas_shown = getattr(app.env, "api_areas_shown", set())
        shown.add(area)
        return area_markdown(area)

    source[0] = _MARKER.sub(replace, source[0])


def _check_every_area_shown(app, env) -> None:
    missing = set(AREAS) - getattr(env, "api_areas_shown", set())
    if missing:
        logger.warning(f"API areas on no page: {', '.join(sorted(missing))}; put `<!-- api-area: NAME -->` on "
                       f"a page under docs/reference/api/")


def _flax_fields(obj) -> set[str]:
    """The dataclass fields of a Flax module class (its attributes, which its signature and docstring show)."""
    try:
        from flax import linen  # pylint: disable=import-outside-toplevel
    except ImportError:
        return set()
    if isinstance(obj, type) and issubclass(obj, linen.Module):
        return {field.name for field in dataclasses.fields(obj)}
    return set()


def _skip_flax_field(app, what, name, obj, skip, options):
    """A Flax module's fields are its constructor's arguments: not listed again as attributes."""
    if what != "class":
        return None
    document = app.env.current_document  # autodoc keeps there the class whose members it is listing
    parent = getattr(sys.modules.get(document.autodoc_module or ""), document.autodoc_class or "", None)
    return True if name in _flax_fields(parent) else None


def _flax_signature(app, what, name, obj, options, signature, return_annotation):
    """A Flax module's signature without `parent` and `name`, which Flax adds to every module."""
    if what != "class" or not _flax_fields(obj):
        return None
    full = inspect.signature(obj)
    kept = full.replace(parameters=[p for p in full.parameters.values() if p.name not in ("parent", "name")])
    return stringify_signature(kept, show_return_annotation=False), return_annotation


def setup(app):
    app.connect("source-read", _source_read)
    app.connect("autodoc-skip-member", _skip_flax_field)
    app.connect("autodoc-process-signature", _flax_signature)
    app.connect("env-check-consistency", _check_every_area_shown)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
