"""The README is a user guide that works as written: it stays short, its Python example runs, its
shell commands parse against the real CLI and name files that exist, its links resolve, and the
docs it points to are written for a reader who was not there."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from simvg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 260
# A code block right under one of these comments documents a command another piece of work is
# adding; it is checked for shell syntax only until the comment is removed.
PENDING = re.compile(r"<!--\s*firstcontact\b")
# Repository paths a command may name as an input: they must exist.
REPO_PREFIXES = (
    "configs/",
    "examples/",
    "simvg/",
    "bench/",
    "docs/",
    "tests/",
    "data/README.md",
    "app.py",
)
OUTPUT_FLAGS = {"--out", "--output", "--save-predictions"}


def code_blocks(path: Path) -> list[tuple[str, str, bool]]:
    """(language, body, pending) of every fenced block; pending = under a PENDING comment."""
    blocks, lines = [], path.read_text().splitlines()
    i, before = 0, []
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            before.append(lines[i])
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        comments = [line for line in before if line.lstrip().startswith("<!--")]
        pending = bool(comments) and bool(PENDING.search(comments[-1]))
        blocks.append((fence.group(1), "\n".join(lines[i + 1 : end]), pending))
        i, before = end + 1, []
    return blocks


def shell_commands(body: str) -> list[list[str]]:
    """Each command of a shell block as words: continuations joined, comments and the README's
    optional-argument brackets (`[--resume]`) removed."""
    text = body.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = re.sub(r"\s\[--[^\]]*\]", " ", line)
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def check_simvg(words: list[str], where: str) -> None:
    """`words` = the arguments after `simvg`: they must parse with the real CLI."""
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exit_:
        pytest.fail(f"{where}: `simvg {' '.join(words)}` does not parse (exit {exit_.code})")
    config = getattr(args, "config", None)
    if config is not None:
        assert (ROOT / config).is_file(), f"{where}: config {config} does not exist"


def check_command(words: list[str], where: str) -> None:
    program = words[0]
    if program == "simvg":
        check_simvg(words[1:], where)
    elif program == "torchrun":
        module = words.index("-m")
        assert words[module + 1] == "simvg", f"{where}: torchrun runs {words[module + 1]}"
        check_simvg(words[module + 2 :], where)
    elif program in ("python", "python3"):
        script = ROOT / words[1]
        assert script.is_file(), f"{where}: {words[1]} does not exist"
        source = script.read_text()
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert f'"{flag}"' in source, f"{where}: {words[1]} has no option {flag}"
    elif program == "make":
        for target in words[1:]:
            if "=" not in target:
                assert target in makefile_targets(), f"{where}: no make target {target}"
    else:
        pytest.fail(f"{where}: unexpected program {program!r} in a README command")
    for previous, word in zip(["", *words], words):
        if previous not in OUTPUT_FLAGS and word.startswith(REPO_PREFIXES):
            assert (ROOT / word).exists(), f"{where}: {word} does not exist"


def test_the_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_LINES, (
        f"README.md has {lines} lines (at most {MAX_LINES}): move detail to docs/"
    )


def test_python_blocks_compile():
    blocks = [body for lang, body, _ in code_blocks(README) if lang == "python"]
    assert blocks, "the README shows the Python API"
    for i, body in enumerate(blocks):
        compile(body, f"README.md python block {i}", "exec")


def test_the_python_example_runs_and_returns_boxes_in_the_image(monkeypatch):
    body = next(body for lang, body, _ in code_blocks(README) if lang == "python")
    monkeypatch.chdir(ROOT)  # the example's paths are relative to the repository
    scope: dict = {}
    exec(compile(body, "README.md python block 0", "exec"), scope)
    result, results = scope["result"], scope["results"]
    assert len(results) == 2
    for r in (result, *results):
        x0, y0, x1, y1 = r.box
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256  # the example images are 256 px
        assert 0.0 <= r.score <= 1.0


def test_shell_commands_parse_and_name_what_exists():
    checked = 0
    for i, (lang, body, pending) in enumerate(code_blocks(README)):
        if lang not in ("bash", "sh"):
            continue
        for words in shell_commands(body):
            if not pending:
                check_command(words, f"README.md bash block {i}")
                checked += 1
    assert checked >= 15, "the README's commands were not found"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_inline_commands_parse_and_name_what_exists(path):
    """Commands quoted in the text (`simvg ...`, `python bench/...`), as the bench figures cite them."""
    prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    # A span of one or two words names a command (`simvg export`, `make test`); longer ones run it.
    commands = [
        span
        for span in spans
        if re.match(r"(simvg|python|torchrun|make|mkdir -p runs &&) \S+ \S", span)
    ]
    for command in commands:
        command = command.removeprefix("mkdir -p runs && ").split(" > ")[0]
        check_command(shlex.split(command), f"{path.name}: `{command}`")


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_local_links_and_images_exist(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{path.name}: broken link {target}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_written_for_a_reader_who_was_not_there(path):
    # Result files keep the names they were written under; a path to one is not wording.
    text = re.sub(r"bench/results/\S+", "", path.read_text())
    for pattern in (r"(?<![A-Za-z0-9])v[1-4](?![0-9])", r"\bthe issue\b", r"\bthis session\b",
                    r"\bprevious session\b", r"\bthe previous README\b"):  # fmt: skip
        found = re.search(pattern, text, re.I)
        assert not found, (
            f"{path.name}: {found.group(0)!r} in {text[max(0, found.start() - 60) : found.end() + 60]!r}"
        )


def test_the_docs_the_readme_promises_exist():
    names = {p.name for p in DOCS}
    assert {
        "synthref.md",
        "synthref-teacher.md",
        "distillation-study.md",
        "inference-speed.md",
    } <= names
    assert (ROOT / "docs" / "demo.png").stat().st_size > 10_000
