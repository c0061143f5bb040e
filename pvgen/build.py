"""Build driver: check, assemble, render every backend, then write only what changed, atomically.

Nothing is written when any step reports an error. Python outputs go through black, but
only when their unformatted text differs from the last build's (recorded in the stamp).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
from importlib import resources
from pathlib import Path

import attrs

from pvgen.assemble import TemplateCache, assemble
from pvgen.backends import JSON, PYTHON, TEXT, Output, all_backends
from pvgen.check import check
from pvgen.diagnostics import Diagnostics
from pvgen.loader import LoadedSpec, display_path
from pvgen.writer import write_if_changed

CACHE = "templates/cache.json"
FILE_LIST = "outputs.txt"  # every file the build generated: what a later build removes when it is gone
BLACK_LINE_LENGTH = 120
# The last line of a generated Python file: the digest of the text black was given. When a
# build renders the same text again, the file on disk is reused and black does not run.
_DIGEST_LINE = "# pvgen: formatted from {digest}\n"


@attrs.frozen
class BuildResult:
    """Every output of a build, in memory, before anything is written."""

    outputs: dict[str, str]  # path below the output directory -> final text
    stale: tuple[str, ...]  # files of an earlier build that this one no longer produces
    read_paths: tuple[str, ...]  # every spec file read


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _formatter() -> str:
    from importlib.metadata import version

    return f"black {version('black')} line-length {BLACK_LINE_LENGTH}"


def _format_python(outputs: list[Output], out_dir: Path) -> dict[str, str]:
    """Final text of each output; black runs only on Python outputs whose rendered text changed."""
    final: dict[str, str] = {}
    pending: list[tuple[Output, str]] = []
    formatter = _formatter()
    for output in outputs:
        if output.kind != PYTHON:
            final[output.path] = output.text
            continue
        marker = _DIGEST_LINE.format(digest=_digest(formatter + "\0" + output.text))
        try:
            on_disk = (out_dir / output.path).read_text()
        except (OSError, UnicodeDecodeError):
            on_disk = ""
        if on_disk.endswith(marker):
            final[output.path] = on_disk
        else:
            pending.append((output, marker))
    if pending:
        texts = _black([output.text for output, _ in pending])
        for (output, marker), text in zip(pending, texts, strict=True):
            final[output.path] = text + marker
    return final


def _black_one(text: str) -> str:
    import black

    mode = black.Mode(line_length=BLACK_LINE_LENGTH, target_versions={black.TargetVersion.PY311})
    return black.format_str(text, mode=mode)


def _black(texts: list[str]) -> list[str]:
    """Formats with black: one forked worker per text when there are several and cores to run them."""
    import black  # imported only when some Python output changed: it is slow to load

    del black
    workers = min(len(texts), os.cpu_count() or 1)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [_black_one(text) for text in texts]
    context = multiprocessing.get_context("fork")  # the workers inherit black, already imported
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_black_one, texts))


def build(loaded: LoadedSpec, out_dir: Path, diagnostics: Diagnostics, verify: bool = True) -> BuildResult | None:
    """Renders every output in memory. None (and nothing written) on any error."""
    spec = check(loaded, diagnostics)
    if spec is None:
        return None
    cache = TemplateCache.load(out_dir / CACHE)
    assembled = assemble(spec, cache, diagnostics, verify)
    if assembled is None:
        return None
    sources = sorted(spec.files)
    outputs: list[Output] = []
    for backend in all_backends():
        outputs += backend.render(assembled, sources)
    outputs.append(Output(CACHE, cache.to_json(), JSON))
    paths = sorted(o.path for o in outputs)
    if len(set(paths)) != len(paths):  # pragma: no cover - a backend bug
        raise AssertionError(f"two backends emit the same file: {paths}")
    outputs.append(Output(FILE_LIST, "".join(f"{p}\n" for p in sorted([*paths, FILE_LIST])), TEXT))
    final = _format_python(outputs, out_dir)
    try:
        earlier = (out_dir / FILE_LIST).read_text().split()
    except OSError:
        earlier = []
    stale = tuple(sorted(p for p in earlier if p not in final and ".." not in p))
    return BuildResult(final, stale, loaded.read_paths)


def write(result: BuildResult, out_dir: Path) -> list[str]:
    """Writes changed outputs (each atomically) and removes stale ones; returns what changed."""
    changed = [path for path, text in sorted(result.outputs.items()) if write_if_changed(out_dir / path, text)]
    for path in result.stale:
        target = out_dir / path
        if target.is_file():
            target.unlink()
            changed.append(path)  # reported as written: it changed
    return changed


def differences(result: BuildResult, out_dir: Path) -> list[str]:
    """What `--check` reports: outputs that are missing, differ, or should no longer exist."""
    found = []
    for path, text in sorted(result.outputs.items()):
        target = out_dir / path
        if not target.is_file():
            found.append(f"missing: {display_path(target)}")
            continue
        current = target.read_bytes()
        if current != text.encode():
            old, new = current.decode(errors="replace").splitlines(), text.splitlines()
            count = sum(1 for a, b in zip(old, new, strict=False) if a != b) + abs(len(old) - len(new))
            found.append(f"differs: {display_path(target)} ({count} line{'s' if count != 1 else ''})")
    for path in result.stale:
        if (out_dir / path).is_file():
            found.append(f"extra:   {display_path(out_dir / path)} (no longer generated)")
    return found


def template_files() -> list[Path]:
    """pvgen's own Mako templates: every output depends on them."""
    folder = resources.files("pvgen").joinpath("templates")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".mako"))


def depfile(result: BuildResult, out_dir: Path) -> str:
    """A make depfile: every output depends on every spec file read and on pvgen's templates."""

    def escape(path: str) -> str:
        return path.replace("$", "$$").replace("#", "\\#").replace(" ", "\\ ")

    targets = [escape(display_path(out_dir / p)) for p in sorted(result.outputs)]
    deps = [escape(display_path(Path(p))) for p in result.read_paths]
    deps += [escape(display_path(p)) for p in template_files()]
    rule = " \\\n  ".join(targets) + ": \\\n  " + " \\\n  ".join(deps)
    phony = "".join(f"\n{dep}:" for dep in deps)  # so make survives a deleted spec file
    return rule + "\n" + phony + "\n"
