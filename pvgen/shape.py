"""Shape checks: what properties a block may hold and what values each takes (context-free)."""

from __future__ import annotations

from collections.abc import Iterable

from pvgen.diagnostics import Diagnostics, Note, expected_one_of
from pvgen.syntax import Entry, Value


class Block:
    """The properties and member blocks of one block entry, indexed and checked for shape.

    `allowed` names the properties; `repeatable` those that may appear more than once;
    `members` the nested block keywords. Any other keyword is passed to `dynamic` (a
    hypervisor name, for instance) or reported with the allowed set.
    """

    def __init__(
        self,
        entry: Entry,
        what: str,
        diagnostics: Diagnostics,
        allowed: Iterable[str],
        repeatable: Iterable[str] = (),
        members: Iterable[str] = (),
        dynamic: Iterable[str] = (),
        dynamic_what: str = "a hypervisor",
    ) -> None:
        self.entry = entry
        self.what = what
        self.diagnostics = diagnostics
        self.allowed = set(allowed)
        self.repeatable = set(repeatable)
        self.members_allowed = set(members)
        self.dynamic_allowed = set(dynamic)
        self.properties: dict[str, list[Entry]] = {}
        self.members: list[Entry] = []
        self.dynamic: list[Entry] = []
        for child in entry.children or ():
            self._add(child, dynamic_what)

    def _add(self, child: Entry, dynamic_what: str) -> None:
        keyword = child.keyword
        if keyword in self.members_allowed:
            if not child.is_block:
                self.error(child, f"'{keyword}' in {self.what} needs a body in braces")
            else:
                self.members.append(child)
            return
        if keyword in self.allowed:
            if child.is_block:
                self.error(child, f"'{keyword}' is a property; end it with ';' instead of a block")
                return
            seen = self.properties.setdefault(keyword, [])
            if seen and keyword not in self.repeatable:
                self.diagnostics.error(
                    child.keyword_span,
                    f"duplicate property '{keyword}' in {self.what}",
                    Note("first set here", seen[0].keyword_span),
                )
                return
            seen.append(child)
            return
        if keyword in self.dynamic_allowed:
            if child.is_block:
                self.error(child, f"'{keyword}' takes an implementation ending with ';', not a block")
                return
            self.dynamic.append(child)
            return
        words = sorted(self.allowed | self.members_allowed)
        message = f"unknown property '{keyword}' in {self.what}; {expected_one_of(words)}"
        if self.dynamic_allowed:
            message += f", or {dynamic_what}: " + ", ".join(sorted(self.dynamic_allowed))
        self.diagnostics.error(child.keyword_span, message)

    def error(self, entry: Entry, message: str) -> None:
        self.diagnostics.error(entry.keyword_span, message)

    def get(self, name: str) -> Entry | None:
        found = self.properties.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[Entry]:
        return self.properties.get(name, [])

    def require(self, name: str, what: str) -> Entry | None:
        found = self.get(name)
        if found is None:
            self.diagnostics.error(self.entry.keyword_span, f"{self.what} is missing '{name}' ({what})")
        return found

    # Value readers: each reports a located error and returns None when the shape is wrong.

    def _single(self, entry: Entry, kind: str, what: str) -> Value | None:
        values = entry.values
        if entry.params is not None or len(entry.groups) != 1 or len(values) != 1 or values[0].kind != kind:
            message = f"'{entry.keyword}' takes {what}"
            if len(values) > 1 and values[1].span.line > values[0].span.line:
                message += f"; is a ';' missing at the end of line {values[0].span.line}?"
            self.diagnostics.error(entry.span, message)
            return None
        return values[0]

    def integer(self, name: str, required: str | None = None) -> Value | None:
        entry = self.require(name, required) if required else self.get(name)
        return self._single(entry, "int", "one integer") if entry else None

    def string(self, name: str, required: str | None = None) -> Value | None:
        entry = self.require(name, required) if required else self.get(name)
        return self._single(entry, "string", "one string") if entry else None

    def name(self, name: str, required: str | None = None) -> Value | None:
        entry = self.require(name, required) if required else self.get(name)
        return self._single(entry, "name", "one name") if entry else None

    def choice(self, name: str, choices: Iterable[str], required: str | None = None) -> Value | None:
        options = sorted(choices)
        entry = self.require(name, required) if required else self.get(name)
        if entry is None:
            return None
        value = self._single(entry, "name", f"one of: {', '.join(options)}")
        if value is not None and value.value not in options:
            self.diagnostics.error(value.span, f"unknown {name} '{value.text}'; {expected_one_of(options)}")
            return None
        return value

    def flag(self, name: str) -> bool:
        entry = self.get(name)
        if entry is None:
            return False
        if entry.groups or entry.params is not None:
            self.diagnostics.error(entry.span, f"'{name}' takes no value")
        return True

    def names(self, name: str, required: str | None = None) -> list[Value] | None:
        entry = self.require(name, required) if required else self.get(name)
        return names_of(entry, self.diagnostics) if entry else None

    def strings(self, name: str, required: str | None = None) -> list[Value] | None:
        entry = self.require(name, required) if required else self.get(name)
        if entry is None:
            return None
        if (
            entry.params is not None
            or not entry.groups
            or any(len(g) != 1 or g[0].kind != "string" for g in entry.groups)
        ):
            self.diagnostics.error(entry.span, f"'{name}' takes a comma-separated list of strings")
            return None
        return [g[0] for g in entry.groups]

    def pairs(self, entry: Entry, second: str) -> list[tuple[Value, Value]] | None:
        """`name 1, other 2`: groups of a name and an integer."""
        if (
            entry.params is not None
            or not entry.groups
            or any(len(g) != 2 or g[0].kind != "name" or g[1].kind != second for g in entry.groups)
        ):
            self.diagnostics.error(entry.span, f"'{entry.keyword}' takes a comma-separated list of 'name {second}'")
            return None
        return [(g[0], g[1]) for g in entry.groups]


def names_of(entry: Entry, diagnostics: Diagnostics) -> list[Value] | None:
    """A comma-separated list of names: `args rdi, rsi, rdx;`."""
    if entry.params is not None or not entry.groups or any(len(g) != 1 or g[0].kind != "name" for g in entry.groups):
        message = f"'{entry.keyword}' takes a comma-separated list of names"
        for group in entry.groups:
            if len(group) > 1 and group[1].span.line > group[0].span.line:
                message += f"; is a ';' missing at the end of line {group[0].span.line}?"
                break
        diagnostics.error(entry.span, message)
        return None
    return [g[0] for g in entry.groups]
