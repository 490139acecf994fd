"""The package's docstrings are plain prose, not reStructuredText: this renders them so that nothing in them is
read as markup (a `name_` is no link, a `*` no emphasis, a line of dashes no section) and no docstring can make
the build warn.

What the prose does mean is kept: paragraphs; `code` in backticks as code; indented blocks (commands, examples) as
literal blocks; lines starting with '- ' as a list; and Args:/Returns:/Raises:/Yields:/Attributes: sections with
their `name: text` entries as a list under a bold title.
"""

from __future__ import annotations

import re

_SECTIONS = ("Args", "Arguments", "Attributes", "Returns", "Raises", "Yields")
_SECTION = re.compile(rf"^({'|'.join(_SECTIONS)}):\s*$")
_ENTRY = re.compile(r"^(?P<name>[\w.*]+(?:, [\w.*]+)*(?:\s*\([^)]*\))?):\s+(?P<text>.*)$")
_BULLET = re.compile(r"^[-*] +(?P<text>.*)$")
_CODE = re.compile(r"``(.+?)``|`([^`]+)`")
_SPECIAL = re.compile(r"([\\*_|`\[\]<>:])")


def escape(text: str) -> str:
    """Prose as rST inline text: `code` as an inline literal, every other markup character escaped."""
    pieces, end = [], 0
    for match in _CODE.finditer(text):
        pieces.append(_SPECIAL.sub(r"\\\1", text[end:match.start()]))
        code = (match.group(1) or match.group(2)).strip()
        pieces.append(f"``{code}``" if code else "")
        end = match.end()
    pieces.append(_SPECIAL.sub(r"\\\1", text[end:]))
    line = "".join(pieces)
    # a leading '-', '#', '1.', '..', '>>>', '+' would start a list, a comment, a table or a title
    return "\\" + line if line and not line[0].isalnum() and not line.startswith(("\\", "``")) else line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _blocks(lines: list[str]):
    """The docstring cut into runs of lines: blank lines end a run, and so does a change from flush to indented."""
    block: list[str] = []
    for line in lines:
        if not line.strip():
            if block:
                yield block
            block = []
        elif block and (_indent(line) > 0) != (_indent(block[0]) > 0) and not (
                _BULLET.match(block[0].strip()) and _indent(line) > 0):
            yield block
            block = [line]
        else:
            block.append(line)
    if block:
        yield block


def _entries(lines: list[str]) -> list[str]:
    """The indented lines of an Args:-like section as list items; a line that is no `name: text` continues the
    entry above it."""
    items: list[list[str]] = []
    base = min(_indent(line) for line in lines)
    for line in lines:
        match = _ENTRY.match(line.strip())
        if _indent(line) == base and match:
            items.append([f"``{match['name']}``: {escape(match['text'])}"])
        elif items:
            items[-1].append(escape(line.strip()))
        else:
            items.append([escape(line.strip())])
    return [f"- {' '.join(item)}" for item in items]


def render(lines: list[str]) -> list[str]:
    """A prepared docstring (autodoc's lines, already dedented) as rST lines that parse without a warning."""
    out: list[str] = []
    blocks = list(_blocks(lines))
    index = 0
    while index < len(blocks):
        block = blocks[index]
        section = _SECTION.match(block[0].strip()) if len(block) == 1 and _indent(block[0]) == 0 else None
        if section and index + 1 < len(blocks) and _indent(blocks[index + 1][0]) > 0:
            out += [f"**{section[1]}**", ""] + _entries(blocks[index + 1]) + [""]
            index += 2
            continue
        if _indent(block[0]) > 0:
            out += ["::", ""] + [line.rstrip() for line in block] + [""]
        elif _BULLET.match(block[0]):
            items: list[list[str]] = []
            for line in block:
                bullet = _BULLET.match(line)
                if bullet or not items:
                    items.append([escape(bullet["text"] if bullet else line.strip())])
                else:
                    items[-1].append(escape(line.strip()))
            out += [f"- {' '.join(item)}" for item in items] + [""]
        else:
            out += [escape(line.strip()) for line in block] + [""]
        index += 1
    return out


def _process(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = render(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
