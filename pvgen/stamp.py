"""Build stamp: lets `pvgen build` skip all work when no input, no output and no part of pvgen changed.

The stamp is a local file in the output directory (not committed): the digests of every
spec file the last build read, of pvgen's own sources and templates, and of every output
it wrote. This module imports nothing heavy, so an up-to-date build costs little more than
the interpreter's start.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

STAMP = ".pvgen-stamp.json"
_PACKAGE = Path(__file__).resolve().parent


def digest_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def pvgen_digest() -> str:
    """One digest over pvgen's code, grammar and templates: a new pvgen means a new build."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*")):
        if path.suffix in (".py", ".mako", ".lark") and "__pycache__" not in path.parts:
            digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _key(paths: Iterable[Path]) -> list[str]:
    return sorted(os.path.abspath(p) for p in paths)


def up_to_date(named: Iterable[Path], out_dir: Path) -> bool:
    """True when the last build's stamp still describes every input and every output exactly."""
    try:
        stamp = json.loads((out_dir / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("named") != _key(named) or stamp.get("pvgen") != pvgen_digest():
        return False
    inputs, outputs = stamp.get("inputs"), stamp.get("outputs")
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        return False
    for path, expected in inputs.items():
        if digest_file(Path(path)) != expected:
            return False
    return all(digest_file(out_dir / path) == expected for path, expected in outputs.items())


def write(named: Iterable[Path], read_paths: Iterable[str], out_dir: Path, outputs: dict[str, str]) -> None:
    """Records a successful build. Written last, so an interrupted build leaves no valid stamp."""
    stamp = {
        "named": _key(named),
        "pvgen": pvgen_digest(),
        "inputs": {path: digest_file(Path(path)) for path in sorted(read_paths)},
        "outputs": {path: hashlib.sha256(text.encode()).hexdigest() for path, text in sorted(outputs.items())},
    }
    target = out_dir / STAMP
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, target)
