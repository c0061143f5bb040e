"""Build driver: check, assemble, render every backend, then write only what changed, atomically.

Nothing is written when any step reports an error. Python outputs go through black, but
only when their unformatted text differs from the last build's (recorded in the stamp).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import attrs

from pvgen import __version__
from pvgen.assemble import TemplateCache, assemble
from pvgen.backends import JSON, PYTHON, Output, all_backends
from pvgen.check import check
from pvgen.diagnostics import Diagnostics
from pvgen.loader import LoadedSpec, display_path
from pvgen.writer import write_if_changed

STAMP = ".pvgen-stamp.json"
CACHE = "templates/cache.json"
BLACK_LINE_LENGTH = 100


@attrs.frozen
class BuildResult:
    """Every output of a build, in memory, before anything is written."""

    outputs: dict[str, str]  # path below the output directory -> final text
    raw_python: dict[str, str]  # Python outputs before black, for the stamp
    stale: tuple[str, ...]  # files of an earlier build that this one no longer produces
    read_paths: tuple[str, ...]  # every spec file read


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _load_stamp(out_dir: Path) -> dict[str, object]:
    try:
        stamp = json.loads((out_dir / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) and stamp.get("generator") == __version__ else {}


def _format_python(outputs: list[Output], out_dir: Path, stamp: dict[str, object]) -> dict[str, str]:
    """Final text of each output; black runs only on Python outputs that changed since the stamp."""
    previous = stamp.get("python", {})
    assert isinstance(previous, dict)
    final: dict[str, str] = {}
    pending: list[Output] = []
    for output in outputs:
        if output.kind != PYTHON:
            final[output.path] = output.text
            continue
        record = previous.get(output.path)
        on_disk = out_dir / output.path
        if isinstance(record, dict) and record.get("raw") == _digest(output.text) and on_disk.is_file():
            text = on_disk.read_text()
            if _digest(text) == record.get("formatted"):
                final[output.path] = text
                continue
        pending.append(output)
    if pending:
        import black  # imported only when some Python output changed: it is slow to load

        mode = black.Mode(line_length=BLACK_LINE_LENGTH, target_versions={black.TargetVersion.PY311})
        for output in pending:
            final[output.path] = black.format_str(output.text, mode=mode)
    return final


def build(loaded: LoadedSpec, out_dir: Path, diagnostics: Diagnostics) -> BuildResult | None:
    """Renders every output in memory. None (and nothing written) on any error."""
    spec = check(loaded, diagnostics)
    if spec is None:
        return None
    cache = TemplateCache.load(out_dir / CACHE)
    assembled = assemble(spec, cache, diagnostics)
    if assembled is None:
        return None
    sources = sorted(spec.files)
    outputs: list[Output] = []
    for backend in all_backends():
        outputs += backend.render(assembled, sources)
    outputs.append(Output(CACHE, cache.to_json(), JSON))
    paths = [o.path for o in outputs]
    if len(set(paths)) != len(paths):  # pragma: no cover - a backend bug
        raise AssertionError(f"two backends emit the same file: {sorted(paths)}")
    stamp = _load_stamp(out_dir)
    final = _format_python(outputs, out_dir, stamp)
    previous = stamp.get("outputs", [])
    stale = (
        tuple(sorted(p for p in previous if isinstance(p, str) and p not in final))
        if isinstance(previous, list)
        else ()
    )
    raw = {o.path: o.text for o in outputs if o.kind == PYTHON}
    return BuildResult(final, raw, stale, loaded.read_paths)


def write(result: BuildResult, out_dir: Path) -> list[str]:
    """Writes changed outputs (each atomically) and removes stale ones; returns what changed."""
    changed = [path for path, text in sorted(result.outputs.items()) if write_if_changed(out_dir / path, text)]
    for path in result.stale:
        target = out_dir / path
        if target.is_file():
            target.unlink()
            changed.append(path)
    stamp = {
        "generator": __version__,
        "outputs": sorted(result.outputs),
        "python": {
            path: {"raw": _digest(raw), "formatted": _digest(result.outputs[path])}
            for path, raw in sorted(result.raw_python.items())
        },
    }
    write_if_changed(out_dir / STAMP, json.dumps(stamp, indent=1, sort_keys=True) + "\n")
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
