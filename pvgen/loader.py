"""Loader: reads spec files and their includes, each once, and parses them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from pvgen.diagnostics import Diagnostic, Diagnostics, Note
from pvgen.parser import parse_text
from pvgen.source import SourceFile, SourceSpan
from pvgen.syntax import Entry, SyntaxFile

SPEC_SUFFIX = ".pvspec"
MAX_INCLUDE_DEPTH = 64


@attrs.frozen
class LoadedSpec:
    """Every file a run read, in load order, with its syntax tree (None on a syntax error)."""

    files: dict[str, SourceFile]
    trees: tuple[SyntaxFile, ...]
    read_paths: tuple[str, ...]  # real paths of every file read, for depfiles


def display_path(path: Path) -> str:
    """A stable, relative path for diagnostics and generated back-references."""
    try:
        return os.path.relpath(path, Path.cwd()).replace(os.sep, "/")
    except ValueError:  # another drive on Windows
        return path.as_posix()


def expand_paths(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files named on the command line: directories expand to their .pvspec files, sorted."""
    found: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*" + SPEC_SUFFIX) if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            missing.append(raw)
    return found, missing


def _include_target(entry: Entry) -> tuple[str, SourceSpan] | None:
    values = entry.values
    if len(values) == 1 and values[0].kind == "string" and not entry.is_block and entry.params is None:
        return str(values[0].value), values[0].span
    return None


def load(paths: Iterable[Path], diagnostics: Diagnostics) -> LoadedSpec:
    """Reads the given files and, depth first, everything they include."""
    files: dict[str, SourceFile] = {}
    trees: list[SyntaxFile] = []
    seen: set[Path] = set()
    read_paths: list[str] = []

    def read(path: Path, include_span: SourceSpan | None, depth: int = 0) -> None:
        real = path.resolve()
        if real in seen:
            return
        seen.add(real)
        shown = display_path(path)
        try:
            raw = real.read_bytes()
        except OSError as error:
            span = include_span or SourceSpan(shown, 1, 1, 1, 1)
            reason = error.strerror or "cannot read"
            diagnostics.error(span, f"cannot read '{shown}': {reason.lower()}")
            return
        read_paths.append(real.as_posix())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            col = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
            diagnostics.error(SourceSpan(shown, line, col, line, col + 1), "file is not valid UTF-8")
            return
        # CR LF and lone CR end lines too; the rest of pvgen sees \n only.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        files[shown] = SourceFile(shown, text)
        tree, error_ = parse_text(shown, text)
        if error_ is not None:
            diagnostics.extend([error_])
            return
        assert tree is not None
        trees.append(tree)
        for entry in tree.entries:
            if entry.keyword != "include":
                continue
            target = _include_target(entry)
            if target is None:
                diagnostics.extend([Diagnostic(entry.span, "an include takes one string, the path of a file")])
                continue
            name, span = target
            child = path.parent / name
            if child.is_dir():
                diagnostics.error(span, f"included path '{name}' is a directory; include a .pvspec file")
                continue
            if not child.is_file():
                note = Note(f"looked for '{display_path(child)}'")
                diagnostics.error(span, f"included file '{name}' does not exist", note)
                continue
            if depth >= MAX_INCLUDE_DEPTH:
                diagnostics.error(span, f"includes nest deeper than {MAX_INCLUDE_DEPTH} files")
                continue
            read(child, span, depth + 1)

    for path in paths:
        read(path, None)
    return LoadedSpec(files, tuple(trees), tuple(read_paths))
