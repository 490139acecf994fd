"""Plain text as MyST Markdown that shows exactly that text: for the generated reference pages."""

from __future__ import annotations

import re

_CODE = re.compile(r"`([^`]+)`")
_PUNCTUATION = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$&:])")


def text(value: str) -> str:
    """Prose as Markdown inline text: `code` spans kept, every other character that could be markup escaped
    (CommonMark lets a backslash escape any ASCII punctuation), line breaks folded into spaces."""
    value = " ".join(value.split())
    pieces, end = [], 0
    for match in _CODE.finditer(value):
        pieces.append(_PUNCTUATION.sub(r"\\\1", value[end:match.start()]))
        pieces.append(code(match.group(1)))
        end = match.end()
    pieces.append(_PUNCTUATION.sub(r"\\\1", value[end:]))
    return "".join(pieces)


def code(value: str) -> str:
    """`value` as an inline code span, also when it holds backticks or pipes (a pipe would split a table cell)."""
    value = " ".join(str(value).split())
    fence = "``" if "`" in value else "`"
    return f"{fence} {value} {fence}".replace("|", "\\|") if fence == "``" else f"`{value}`".replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown pipe table of cells that are already Markdown."""
    lines = [f"| {' | '.join(header)} |", f"|{'|'.join('---' for _ in header)}|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def fenced(value: str, language: str = "text", css_class: str = "") -> str:
    """A fenced code block showing `value` verbatim, with `css_class` on its HTML element if given."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    if css_class:
        return f"{fence}{{code-block}} {language}\n:class: {css_class}\n\n{value.rstrip()}\n{fence}"
    return f"{fence}{language}\n{value.rstrip()}\n{fence}"


def generate_at_marker(app, marker: re.Pattern, render) -> dict:
    """Sphinx set-up of a generated page: when a page whose source holds `marker` is read, the marker is replaced
    by render(docname) (Markdown). Returns the extension's metadata."""
    def source_read(_app, docname: str, source: list[str]) -> None:
        if marker.search(source[0]):
            source[0] = marker.sub(lambda _: render(docname), source[0])

    app.connect("source-read", source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
