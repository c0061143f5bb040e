"""Formatter: prints the entry AST in canonical form, keeping every comment."""

from __future__ import annotations

import bisect

from pvgen.syntax import Comment, Entry, Param, SyntaxFile, Value

INDENT = "    "
WIDTH = 100


def _value_text(value: Value, indent: str) -> str:
    if value.kind != "string" or not value.text.startswith('"""'):
        return value.text
    body = str(value.value)
    inner = indent + INDENT
    lines = [(inner + line) if line.strip() else "" for line in body.split("\n")]
    return '"""\n' + "\n".join(lines) + "\n" + indent + '"""'


def _words(values: tuple[Value, ...], indent: str) -> str:
    out = ""
    for value in values:
        text = _value_text(value, indent)
        if not out:
            out = text
        elif value.kind == "star":
            out += " *" if not out.endswith("*") else "*"
        elif out.endswith("*"):
            out += text
        else:
            out += " " + text
    return out


def _param(param: Param, indent: str) -> str:
    text = _words(param.words, indent)
    if param.annotation:
        text += ": " + _words(param.annotation, indent)
    return text


class _Printer:
    def __init__(self, tree: SyntaxFile) -> None:
        self.comments = sorted(tree.comments, key=lambda c: (c.span.line, c.span.col))
        self.comment_lines = [c.span.line for c in self.comments]
        self.used: set[int] = set()
        self.lines: list[str] = []

    def _take_comments(self, before_line: int) -> list[Comment]:
        """Unprinted comments that start before the given line."""
        stop = bisect.bisect_left(self.comment_lines, before_line)
        found = [c for i, c in enumerate(self.comments[:stop]) if i not in self.used]
        self.used.update(i for i in range(stop) if i not in self.used)
        return found

    def _trailing(self, line: int) -> Comment | None:
        index = bisect.bisect_left(self.comment_lines, line)
        if index < len(self.comments) and self.comment_lines[index] == line and index not in self.used:
            self.used.add(index)
            return self.comments[index]
        return None

    def _emit_leading(self, entry_line: int, indent: str, previous_end: int | None) -> None:
        comments = self._take_comments(entry_line)
        last_line = previous_end
        for comment in comments:
            if last_line is not None and comment.span.line - last_line > 1 and self.lines and self.lines[-1] != "":
                self.lines.append("")
            self.lines.append(indent + comment.text.rstrip())
            last_line = comment.span.line

    def entries(self, entries: tuple[Entry, ...], indent: str, block_start: int | None) -> None:
        previous_end = block_start
        for position, entry in enumerate(entries):
            first_line = entry.span.line
            leading_line = first_line
            pending = [c for i, c in enumerate(self.comments) if i not in self.used and c.span.line < first_line]
            if pending:
                leading_line = pending[0].span.line
            if previous_end is not None and position > 0 and leading_line - previous_end > 1:
                self.lines.append("")
            elif position > 0 and entry.is_block and entries[position - 1].keyword != entry.keyword:
                self.lines.append("")
            self._emit_leading(first_line, indent, previous_end if position > 0 else None)
            self.entry(entry, indent)
            previous_end = entry.span.end_line

    def _header(self, entry: Entry, indent: str) -> str:
        head = entry.keyword
        groups = [_words(group, indent) for group in entry.groups]
        params = None
        if entry.params is not None:
            params = "(" + ", ".join(_param(p, indent) for p in entry.params) + ")"
        if groups:
            joined = ", ".join(groups)
            candidate = indent + head + " " + joined + (params or "")
            if len(candidate) > WIDTH and len(groups) > 1 and params is None:
                return self._wrapped(indent, head, groups)
            head += " " + joined
        if params is not None:
            head += params
        return indent + head

    def _wrapped(self, indent: str, head: str, groups: list[str]) -> str:
        lines = [indent + head]
        for index, group in enumerate(groups):
            piece = group + ("," if index < len(groups) - 1 else "")
            current = lines[-1]
            starts_line = current == indent + head
            if len(current) + 1 + len(piece) <= WIDTH:
                lines[-1] = current + " " + piece
            elif starts_line:
                lines[-1] = current + " " + piece
            else:
                lines.append(indent + INDENT * 2 + piece)
        return "\n".join(lines)

    def entry(self, entry: Entry, indent: str) -> None:
        for doc in entry.docs:
            self.lines.append((indent + "/// " + doc).rstrip())
        header = self._header(entry, indent)
        if entry.children is None:
            self.lines.append(header + ";")
            self._attach_trailing(entry.span.end_line)
            return
        self.lines.append(header + " {")
        self._attach_trailing(entry.keyword_span.line)
        self.entries(entry.children, indent + INDENT, entry.keyword_span.line)
        self._emit_leading(entry.span.end_line, indent + INDENT, None)
        self.lines.append(indent + "}")
        self._attach_trailing(entry.span.end_line)

    def _attach_trailing(self, line: int) -> None:
        comment = self._trailing(line)
        if comment is not None:
            self.lines[-1] += "  " + comment.text.rstrip()


def format_tree(tree: SyntaxFile) -> str:
    """The canonical text of a parsed file."""
    printer = _Printer(tree)
    printer.entries(tree.entries, "", None)
    leftovers = [c for i, c in enumerate(printer.comments) if i not in printer.used]
    if leftovers:
        if printer.lines:
            printer.lines.append("")
        printer.lines += [c.text.rstrip() for c in leftovers]
    return "\n".join(printer.lines).rstrip("\n") + "\n"
