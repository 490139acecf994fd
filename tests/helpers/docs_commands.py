"""The commands of README.md and docs/**/*.md: extraction, the static checks, and the rewrite onto the test config.

The convention (docs/guides/testing.md, "Documented commands"): a command a user types is in a fenced `sh`
block, one command per line, a line ending in `\\` continued on the next; output is in `text` blocks. An `sh`
block runs in the test suite unless the line right before its opening fence is a marker

    <!-- docs-test: REASON (why) -->

with REASON one of MARKER_REASONS (`long` needs the parenthesis). Every command, run or not, and every
`python3 ...` / `mbde-...` command quoted inline in the prose, is checked statically: its flags, config fields,
config files and repository paths must exist.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex
from collections.abc import Iterable, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Why a block does not run in the suite.
MARKER_REASONS = {
    "accelerator": "needs a GPU or TPU",
    "cluster": "needs SLURM or several hosts",
    "network": "downloads something",
    "ci": "run as written by .ci/run (the setup and test commands)",
    "interactive": "a server that runs until stopped",
    "long": "minutes even on the test config; the parenthesis says what runs it instead",
}
REASONS_NEEDING_WHY = ("long",)
# What the rewrite puts every heavy config on: ResNet-8, 3 branches, batch 8, 2 epochs, on tfds mock data.
TEST_CONFIG = "configs/test.py"
# ... shortened to one epoch (one checkpoint, one evaluation) before the command's own overrides, which win.
TEST_CONFIG_OVERRIDES = ("--config.num_epochs=1", "--config.lr_boundaries_epochs=()", "--config.rampup_epochs=1")
HEAVY_CONFIGS = re.compile(r"^configs/(demo|default|paper)\.py(:.*)?$")
# The input benchmark's mock dataset: enough for its 300 batches to cycle through, not a CIFAR-sized one.
MAX_MOCK_EXAMPLES = 1_000
# Top-level entries of a clone a command may name; a block runs in a temporary directory holding links to them.
REPO_DIRS = ("configs", "slurm", "colab", ".ci", "docs", "tests", "benchmarks", "mbde_jax", "constraints")
CLONE_ENTRIES = ("train.py", "configs", "slurm", "benchmarks", "colab", "constraints", "setup.cfg", "pyproject.toml")

_FENCE = re.compile(r"^(```+|~~~+)\s*([^\s`]*)")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")
_MARKER_BODY = re.compile(r"^(\w[\w-]*)\s*(?:\((.+)\))?$")
_INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|^\[|\]$")
_REPO_PATH = re.compile(r"(?<![\w/.~<>-])((?:" + "|".join(re.escape(d) for d in REPO_DIRS) + r")/[\w./-]*\w)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced code block of a document."""
    path: str  # relative to the repository root
    line: int  # 1-based line of its opening fence
    language: str
    commands: tuple[str, ...]  # for sh: one entry per command, continuations joined
    marker: str | None  # the whole marker text before its fence, if any

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def reason(self) -> str | None:
        match = _MARKER_BODY.match(self.marker or "")
        return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A documented command that runs one of mbde_jax's tools."""
    name: str  # console name, e.g. 'mbde-sweep'
    invocation: str  # as command_reference names its usage form, e.g. 'mbde-benchmark train'
    program: tuple[str, ...]  # how the command starts it: ('python3', 'train.py'), ('python3', '-m', 'mbde_jax.x')
    args: tuple[str, ...]  # what follows the program
    env: tuple[tuple[str, str], ...]  # VAR=value assignments before it


def documents(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """README.md and every Markdown page under docs/ (not under a build or hidden folder: docs/_build/...)."""
    pages = sorted(path for path in (root / "docs").rglob("*.md")
                   if not any(part.startswith(("_", ".")) for part in path.relative_to(root / "docs").parts[:-1]))
    return [root / "README.md", *pages]


def blocks(text: str, path: str) -> list[Block]:
    """Every fenced code block of a Markdown text, with the marker line right before its fence."""
    found, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        match = _FENCE.match(lines[index].strip())
        if not match:
            index += 1
            continue
        fence, language, start = match.group(1), match.group(2), index
        body = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1
        previous = lines[start - 1].strip() if start else ""
        marker = _MARKER.match(previous)
        commands = tuple(join_continuations(body)) if language == "sh" else tuple(body)
        found.append(Block(path, start + 1, language, commands, marker.group(1) if marker else None))
    return found


def join_continuations(lines: Iterable[str]) -> list[str]:
    """Logical command lines: a line ending in a backslash continues on the next; blank lines and comments go."""
    commands, pending = [], ""
    for line in lines:
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        command = (pending + stripped).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    if pending.strip():
        commands.append(pending.strip())
    return commands


def all_blocks(root: pathlib.Path = ROOT) -> list[Block]:
    return [block for document in documents(root)
            for block in blocks(document.read_text(), str(document.relative_to(root)))]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    kept, inside = [], None
    for line in text.splitlines():
        match = _FENCE.match(line.strip())
        if inside is None and match:
            inside = match.group(1)
        elif inside is not None and line.strip().startswith(inside):
            inside = None
        elif inside is None:
            kept.append(line)
    return "\n".join(kept)


def inline_commands(text: str) -> list[str]:
    """Commands quoted inline in the prose: code spans that start with `python3 ` or `mbde-<tool> `."""
    spans = (" ".join(span.split()) for span in _INLINE_CODE.findall(prose(text)))
    return [span for span in spans if span.startswith("python3 ") or re.match(r"mbde-[a-z]+ ", span)]


def block_problem(block: Block) -> str | None:
    """Why a block breaks the convention, or None: a marker with an unknown or missing reason, a marker before a
    block that is not sh, a shell block labelled other than sh, or an unmarked sh block that cannot run."""
    if block.marker is not None:
        match = _MARKER_BODY.match(block.marker)
        if not match:
            return (f"{block.name}: the marker `{block.marker}` is not `docs-test: REASON (why)`; REASON is one of "
                    f"{', '.join(MARKER_REASONS)}")
        reason, why = match.groups()
        if reason not in MARKER_REASONS:
            return f"{block.name}: unknown marker reason {reason!r}; use one of {', '.join(MARKER_REASONS)}"
        if reason in REASONS_NEEDING_WHY and not why:
            return f"{block.name}: the marker `{reason}` needs a parenthesis saying what runs the command instead"
        if block.language != "sh":
            return f"{block.name}: a docs-test marker before a {block.language or 'plain'} block; only sh blocks run"
        return None
    if block.language in ("bash", "shell", "console", "zsh"):
        return f"{block.name}: a {block.language} block; commands a user types go in sh blocks (see testing.md)"
    if block.language != "sh":
        return None
    if not block.commands:
        return f"{block.name}: an empty sh block"
    for command in block.commands:
        unrunnable = unrunnable_because(command) or outside_the_clone(command)
        if unrunnable:
            return (f"{block.name}: `{command}` cannot run as written ({unrunnable}); write it runnable or mark the "
                    f"block with <!-- docs-test: REASON (why) -->")
    return None


def unrunnable_because(command: str) -> str | None:
    try:
        words = shlex.split(command)
    except ValueError as error:
        return f"not shell syntax: {error}"
    placeholders = [word for word in words if _PLACEHOLDER.search(word)]
    return f"placeholders {placeholders}" if placeholders else None


def outside_the_clone(command: str) -> str | None:
    """A runnable command works in its temporary clone only: no absolute paths (/shared/..., /tmp/...)."""
    absolute = [word for word in shlex.split(command) if re.match(r"^(--[\w.]+=)?/", word)]
    return f"absolute paths {absolute}, outside the directory it runs in" if absolute else None


def runnable(block: Block) -> bool:
    return block.language == "sh" and block.marker is None


def tool_call(command: str) -> ToolCall | None:
    """The mbde_jax tool a command runs, or None for any other command (a pipe or a list runs no single tool)."""
    from mbde_jax import cli

    try:
        words = shlex.split(command)
    except ValueError:
        return None
    env = []
    while words and _ENV_ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        env.append((name, value))
    if not words or any(word in ("|", "&&", "||", ";", "&") for word in words):
        return None
    by_module = {module: name for name, (module, _) in cli.COMMANDS.items()}
    if words[0] in ("python", "python3") and len(words) > 1 and pathlib.PurePath(words[1]).name == "train.py":
        name, program = "mbde-train", tuple(words[:2])
    elif words[0] in ("python", "python3") and len(words) > 2 and words[1] == "-m" and words[2] in by_module:
        name, program = by_module[words[2]], tuple(words[:3])
    elif words[0] in cli.COMMANDS:
        name, program = words[0], (words[0],)
    else:
        return None
    args = tuple(words[len(program):])
    invocation = name
    if name == "mbde-benchmark" and args and not args[0].startswith("-"):
        invocation = f"{name} {args[0]}"
    return ToolCall(name, invocation, program, args, tuple(env))


def flag_problems(call: ToolCall, where: str) -> list[str]:
    """Each --flag of the call that its tool does not define (absl's own flags and --help allowed)."""
    from absl import flags

    from mbde_jax import cli

    forms = {invocation: flag_values for invocation, _, flag_values in cli.command_reference(call.name)}
    if not call.args:
        return []
    if call.invocation not in forms:
        return [f"{where}: `{call.invocation}` is not a form of {call.name}; its forms: {', '.join(forms)}"]
    known = set(forms[call.invocation]) | set(flags.FLAGS) | {"help", "helpfull"}
    problems = []
    for arg in call.args:
        if not arg.startswith("--") or arg.startswith("--config."):
            continue
        name = arg[2:].split("=", 1)[0]
        if name in known or (name.startswith("no") and name[2:] in known):
            continue
        problems.append(f"{where}: `--{name}` is not a flag of {call.invocation} (its flags: "
                        f"{', '.join('--' + flag for flag in sorted(forms[call.invocation]))})")
    return problems


def config_fields(config_file: str = "configs/default.py", root: pathlib.Path = ROOT) -> set[str]:
    """Every field of a config file's get_config(), nested ones dotted."""
    from mbde_jax import config_utils

    def flatten(config, prefix=""):
        for key, value in config.items():
            if hasattr(value, "items"):
                yield from flatten(value, f"{prefix}{key}.")
            yield prefix + key

    return set(flatten(config_utils.load_config(str(root / config_file))))


def field_problems(arguments: Sequence[str], where: str, fields: set[str]) -> list[str]:
    """Each --config.<field> naming no field of configs/default.py."""
    problems = []
    for arg in arguments:
        if arg.startswith("--config."):
            field = arg[len("--config."):].split("=", 1)[0]
            if field not in fields:
                problems.append(f"{where}: `--config.{field}` is not a field of configs/default.py's get_config()")
    return problems


def prose_field_problems(text: str, where: str, fields: set[str]) -> list[str]:
    """Each `--config.<field>` the prose names (in any code span, command or not) that is no field."""
    named = re.findall(r"--config\.([A-Za-z_][\w.]*\w)", " ".join(_INLINE_CODE.findall(prose(text))))
    return [f"{where}: `--config.{field}` is not a field of configs/default.py's get_config()"
            for field in sorted(set(named)) if field not in fields]


def config_arguments(arguments: Sequence[str]) -> list[str]:
    """The values of --config (as `--config FILE` or `--config=FILE`)."""
    values = []
    for index, arg in enumerate(arguments):
        if arg == "--config" and index + 1 < len(arguments):
            values.append(arguments[index + 1])
        elif arg.startswith("--config="):
            values.append(arg[len("--config="):])
    return values


def config_file_problems(arguments: Sequence[str], where: str, root: pathlib.Path = ROOT) -> list[str]:
    """Each --config FILE[:ARGS] that does not exist or whose get_config(ARGS) raises."""
    from mbde_jax import config_utils

    problems = []
    for value in config_arguments(arguments):
        if _PLACEHOLDER.search(value):
            continue
        path, _ = config_utils.split_config_arg(value)
        if not (root / path).is_file():
            problems.append(f"{where}: the config file {path} does not exist")
            continue
        try:
            config_utils.load_config(str(root / value))
        except Exception as error:  # pylint: disable=broad-except  # any failure to load is the finding
            problems.append(f"{where}: --config {value} does not load: {type(error).__name__}: {error}")
    return problems


# The documentation build's output (.ci/docs, docs/reference/building.md), listed in .gitignore.
BUILD_OUTPUT = "docs/_build/"


def path_problems(text: str, where: str, root: pathlib.Path = ROOT) -> list[str]:
    """Each repository path (configs/..., slurm/..., docs/...) named in `text` that does not exist; a path ending
    in a module's attribute (mbde_jax/experiment.resolve) counts as its module file."""
    problems = []
    for path in sorted(set(_REPO_PATH.findall(text))):
        if path.startswith(BUILD_OUTPUT):
            continue  # what the documented build command writes (git ignores it): absent from a fresh clone
        candidates = [path, path + ".py", re.sub(r"\.\w+$", ".py", path)]
        if not any((root / candidate).exists() for candidate in candidates):
            problems.append(f"{where}: the path {path} does not exist in the repository")
    return problems


def heading_anchors(text: str) -> set[str]:
    """The anchors of a Markdown page's headings, slugged as GitHub and MyST's heading anchors do."""
    anchors = set()
    for line in prose(text).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if match:
            title = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", match.group(1))
            anchors.add(re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"))
    return anchors


def link_problems(document: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Each relative link of a page whose file, or whose #anchor in that file, does not exist."""
    where = str(document.relative_to(root))
    problems = []
    for target in _LINK.findall(prose(document.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            problems.append(f"{where}: the link {target} points to {file_part}, which does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            problems.append(f"{where}: the link {target}: {file_part or where} has no heading #{anchor}")
    return problems


def segments(command: str) -> list[str]:
    """The simple commands inside a command line, as a reader sees them: split at ; && || | & and the shell's
    do/then, redirections dropped, and what a launcher starts in place of the launcher: `srun -n 2 python3
    train.py ...` is `python3 train.py ...`, `sbatch ... slurm/train.sbatch <flags>` is `mbde-train <flags>`."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:
        return [command]
    parts, current, skip = [], [], False
    for index, word in enumerate(words + [";"]):
        if skip:
            skip = False
        elif word in (";", "&&", "||", "|", "&", "do", "then", "done", "fi"):
            if current:
                parts.append(current)
            current = []
        elif word in (">", ">>", "<", ">&", "&>"):
            skip = True  # the redirection's target
        elif word.isdigit() and index + 1 < len(words) and words[index + 1] in (">", ">>", ">&"):
            pass  # the file descriptor of `2>&1`
        else:
            current.append(word)
    simple = []
    for part in parts:
        if part[0] == "srun":
            starts = [i for i, word in enumerate(part) if word in ("python", "python3") or word.startswith("mbde-")]
            part = part[starts[0]:] if starts else part
        elif part[0] == "sbatch" and "slurm/train.sbatch" in part:
            part = ["mbde-train", *part[part.index("slurm/train.sbatch") + 1:]]
        simple.append(shlex.join(part))
    return simple


def static_problems(command: str, where: str, fields: set[str], root: pathlib.Path = ROOT) -> list[str]:
    """Every static check of one command line: the flags, config fields and config files of each tool it runs
    (launched by srun or slurm/train.sbatch too), and the repository paths it names."""
    problems = path_problems(command, where, root)
    for segment in segments(command):
        call = tool_call(segment)
        if call is None:
            continue
        arguments = [arg for arg in call.args if not _PLACEHOLDER.search(arg)]
        problems += (flag_problems(call, where) + field_problems(arguments, where, fields)
                     + config_file_problems(arguments, where, root))
    return problems


def rewrite(arguments: Sequence[str]) -> list[str]:
    """The arguments with every heavy config (configs/demo.py, configs/default.py, configs/paper.py:<cell>) put
    on the test config shortened by TEST_CONFIG_OVERRIDES, and the benchmark's --mock_examples at most
    MAX_MOCK_EXAMPLES; the rest as written."""
    rewritten, previous = [], None
    for arg in arguments:
        if previous == "--config" and HEAVY_CONFIGS.match(arg):
            rewritten += [TEST_CONFIG, *TEST_CONFIG_OVERRIDES]
            previous = arg
            continue
        if arg.startswith("--config=") and HEAVY_CONFIGS.match(arg[len("--config="):]):
            rewritten += [f"--config={TEST_CONFIG}", *TEST_CONFIG_OVERRIDES]
            previous = arg
            continue
        if previous == "--mock_examples" and arg.isdigit():
            arg = str(min(int(arg), MAX_MOCK_EXAMPLES))
        elif arg.startswith("--mock_examples=") and arg.split("=", 1)[1].isdigit():
            arg = f"--mock_examples={min(int(arg.split('=', 1)[1]), MAX_MOCK_EXAMPLES)}"
        previous = arg
        rewritten.append(arg)
    return rewritten
