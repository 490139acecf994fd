"""The config fields of configs/default.py as the file itself documents them: section, default, comment.

The comment block directly above `config.<field> = <value>` inside get_config() is the field's one
description; a `# --- Title ---` comment opens a section. The documentation site's config reference and its
test read this module, so a field added without a comment is named at once instead of being left undocumented.
Only the standard library: it reads the source (ast and tokenize) and never imports the config.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import pathlib
import re
import tokenize

_SECTION = re.compile(r"^#\s*-{2,}\s*(?P<title>.*?)\s*-*\s*$")


@dataclasses.dataclass(frozen=True)
class Field:
    """One `config.<name> = <value>` of get_config(): `default_source` is the value as written."""
    name: str
    section: str
    default_source: str
    description: str
    line: int


def _comments(source: str) -> dict[int, str]:
    """Line number -> text of a comment that fills its line on its own (trailing comments are not kept)."""
    lines = source.splitlines()
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and not lines[token.start[0] - 1][:token.start[1]].strip():
            found[token.start[0]] = token.string
    return found


def _target_name(target: ast.expr, config_name: str) -> str | None:
    """'a.b' for `config.a.b`, None for anything that is not an attribute of the config variable."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name) and target.id == config_name and parts:
        return ".".join(reversed(parts))
    return None


def parse_fields(path: str | pathlib.Path) -> list[Field]:
    """Every field that get_config() of the config file at `path` assigns, in the file's order.

    Raises ValueError (one line naming the file) when the file has no get_config().
    """
    path = pathlib.Path(path)
    source = path.read_text()
    function = next((node for node in ast.parse(source).body
                     if isinstance(node, ast.FunctionDef) and node.name == "get_config"), None)
    if function is None:
        raise ValueError(f"{path}: no get_config() function; a config file defines its fields there")
    comments = _comments(source)
    sections = {line: match["title"] for line, text in comments.items() if (match := _SECTION.match(text))}
    fields = []
    for statement in ast.walk(function):
        if not isinstance(statement, (ast.Assign, ast.AnnAssign)):
            continue
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        for target in targets:
            name = _target_name(target, "config")
            if name is None:
                continue
            block, line = [], statement.lineno - 1
            while line in comments and line not in sections:  # the comment lines right above, up to a gap
                block.insert(0, comments[line].lstrip("#").strip())
                line -= 1
            section = next((sections[s] for s in sorted(sections, reverse=True) if s < statement.lineno), "")
            fields.append(Field(name=name, section=section,
                                default_source=ast.get_source_segment(source, statement.value) or "",
                                description=" ".join(block), line=statement.lineno))
    return sorted(fields, key=lambda field: field.line)


def flatten(tree: dict, prefix: str = ""):
    """(dotted name, value) of every leaf of a nested dict, e.g. of `config.to_dict()`."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def undocumented(fields: list[Field]) -> list[str]:
    """The names of the fields without a comment above them."""
    return [field.name for field in fields if not field.description]


def default_value(field: Field):
    """The default as a Python value: the literal as written, or None for config_dict.placeholder(type)
    (unset). Raises ValueError (naming the field) for a default that is neither."""
    expression = ast.parse(field.default_source, mode="eval").body
    if isinstance(expression, ast.Call) and ast.unparse(expression.func).endswith("placeholder"):
        return None
    try:
        return ast.literal_eval(expression)
    except ValueError as error:
        raise ValueError(f"config field {field.name}: default {field.default_source!r} is not a literal "
                         f"or a placeholder; write it as one so the reference can show it") from error


def placeholder_type(field: Field) -> str | None:
    """'str' for `config_dict.placeholder(str)`, None for a field with a literal default."""
    expression = ast.parse(field.default_source, mode="eval").body
    if isinstance(expression, ast.Call) and ast.unparse(expression.func).endswith("placeholder"):
        return ast.unparse(expression.args[0]) if expression.args else "any"
    return None
