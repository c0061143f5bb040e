"""IR dump: the checked spec as stable JSON (format documented in docs/ir-json.md)."""

from __future__ import annotations

import json
from typing import Any

import attrs

from pvgen import ir
from pvgen.source import SourceSpan

FORMAT_VERSION = 1


def _plain(value: Any) -> Any:
    if isinstance(value, SourceSpan):
        return f"{value.path}:{value.line}:{value.col}"
    if attrs.has(type(value)):
        out = {field.name: _plain(getattr(value, field.name)) for field in attrs.fields(type(value))}
        if isinstance(value, ir.Op):
            out["qualname"] = value.qualname
        return out
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def to_json(spec: ir.Spec) -> str:
    """The IR as pretty-printed JSON; the same spec always gives the same bytes."""
    document = {"format": "pvgen-ir", "format_version": FORMAT_VERSION, "spec": _plain(spec)}
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
