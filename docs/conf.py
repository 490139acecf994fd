"""Sphinx configuration of the documentation site: `python3 -m sphinx -W --keep-going -n -b html docs docs/_build/html`.

Pages are MyST Markdown; the reference pages are generated from the code by the extensions in docs/_ext
(the API from docstrings, the config fields from configs/default.py, every command's flags from the flags).
The build needs no network: no intersphinx, and the theme's assets are in its package.
"""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # the checkout's mbde_jax, also when it is not installed editable

from mbde_jax import logs  # noqa: E402  (after the path)

# autodoc imports the data modules, which import TensorFlow: without its C++ start-up lines, which would read
# like build warnings.
logs.import_tensorflow_quietly()

project = "mbde_jax"
author = "mbde_jax authors"
copyright = "the mbde_jax authors, Apache-2.0"  # pylint: disable=redefined-builtin

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "prose_docstrings",
    "api_reference",
    "config_reference_docs",
    "cli_reference_docs",
]

source_suffix = {".md": "markdown"}
# A docstring's indented block (a command, a layout, a table) is shown as written, not coloured as Python.
highlight_language = "text"
root_doc = "index"
# Not pages: the build output and the extensions' code.
exclude_patterns = ["_build", "_ext"]

# `[text](page.md#section)` links resolve against headings down to this level; a missing one is a warning.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]
# Every cross-reference is checked (-n); types from other libraries have no target here (no intersphinx,
# the build is offline), so only those are let through, never a reference into mbde_jax.
nitpicky = True
# Text shows as written: `--flag` stays two hyphens and 'x' keeps straight quotes, in the pages and the docstrings.
smartquotes = False
nitpick_ignore_regex = [(r"py:.*", r"(?!mbde_jax\b).*")]

# A package's __all__ re-exports what its modules define: each object is shown once, in the module that defines it.
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Only our own docstrings: a method we override without one does not show the library's (rST) text as ours.
autodoc_inherit_docstrings = False

html_theme = "sphinx_book_theme"
html_title = "mbde_jax"
html_static_path = ["_static"]
html_css_files = ["reference.css"]
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": False,
    "use_fullscreen_button": False,
}

# Pages that no toctree lists on purpose: the demo sweep's report, which mbde-report writes (so it cannot carry
# front matter of its own) and the guides link to.
ORPHAN_PAGES = ("demo_report/results",)


def _mark_orphans(app, docname, source):
    if docname in ORPHAN_PAGES:
        source[0] = "---\norphan: true\n---\n" + source[0]


def setup(app):
    app.connect("source-read", _mark_orphans)
