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
        self.last_line: int | None = None  # source line of what was printed last, at this level

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

    def _blank_if_gap(self, line: int) -> None:
        """Keeps one blank line where the source had at least one (never at a block start)."""
        if self.last_line is not None and line - self.last_line > 1 and self.lines and self.lines[-1] != "":
            self.lines.append("")

    def _emit_leading(self, entry_line: int, indent: str) -> None:
        for comment in self._take_comments(entry_line):
            self._blank_if_gap(comment.span.line)
            self.lines.append(indent + comment.text.rstrip())
            self.last_line = comment.span.end_line

    def entries(self, entries: tuple[Entry, ...], indent: str) -> None:
        for position, entry in enumerate(entries):
            self._emit_leading(entry.span.line, indent)
            self._blank_if_gap(entry.span.line)
            following = entries[position + 1].span.line if position + 1 < len(entries) else None
            self.entry(entry, indent, following)
            self.last_line = entry.span.end_line

    def _header(self, entry: Entry, indent: str) -> str:
        pieces = [_words(group, indent) for group in entry.groups]
        head = entry.keyword
        if entry.params is None:
            return self._wrapped(indent, head + " ", pieces, "")
        params = [_param(p, indent) for p in entry.params]
        if pieces:
            head += " " + ", ".join(pieces)
        return self._wrapped(indent, head + "(", params, ")", INDENT * 2)

    def _wrapped(self, indent: str, head: str, pieces: list[str], close: str, hang: str = INDENT) -> str:
        """`head` then the comma-separated pieces, wrapped before WIDTH with one extra indent."""
        single = indent + head + ", ".join(pieces) + close
        if len(single) <= WIDTH or len(pieces) < 2:
            return single.rstrip()
        lines = [indent + head]
        for index, piece in enumerate(pieces):
            piece += "," if index < len(pieces) - 1 else close
            current = lines[-1]
            fresh = current in (indent + head, indent + hang)
            separator = "" if current.endswith(("(", " ")) else " "
            if fresh or len(current) + len(separator) + len(piece) <= WIDTH:
                lines[-1] = current + separator + piece
            else:
                lines.append(indent + hang + piece)
        return "\n".join(lines)

    def _own_lines(self, before: int, indent: str) -> None:
        """Comments inside an entry (between its doc and keyword, or in a list): each on its own line."""
        for comment in self._take_comments(before):
            self.lines.append(indent + comment.text.rstrip())

    def entry(self, entry: Entry, indent: str, following: int | None = None) -> None:
        self._own_lines(entry.keyword_span.line, indent)
        for doc in entry.docs:
            self.lines.append((indent + "/// " + doc).rstrip())
        header = self._header(entry, indent)
        header_end = _header_end_line(entry)
        if entry.children is None:
            self.lines.append(header + ";")
            if following != entry.span.end_line:  # `a; b; // c` belongs to b
                self._attach_trailing(entry.span.end_line)
            self._own_lines(entry.span.end_line, indent)
            return
        self.lines.append(header + " {")
        children = entry.children
        if not children or children[0].span.line != header_end:
            self._attach_trailing(header_end)
        self._own_lines(header_end, indent + INDENT)
        self.last_line = None
        self.entries(entry.children, indent + INDENT)
        self._emit_leading(entry.span.end_line, indent + INDENT)
        self.lines.append(indent + "}")
        if following != entry.span.end_line:
            self._attach_trailing(entry.span.end_line)

    def _attach_trailing(self, line: int) -> None:
        comment = self._trailing(line)
        if comment is not None:
            self.lines[-1] += "  " + comment.text.rstrip()


def _header_end_line(entry: Entry) -> int:
    """The line where an entry's header ends: where its `{` or `;` follows."""
    last = entry.keyword_span.end_line
    for group in entry.groups:
        last = max(last, group[-1].span.end_line)
    for param in entry.params or ():
        last = max(last, param.span.end_line)
    return last


def format_tree(tree: SyntaxFile) -> str:
    """The canonical text of a parsed file."""
    if not tree.entries and not tree.comments:
        return ""
    printer = _Printer(tree)
    printer.entries(tree.entries, "")
    leftovers = [c for i, c in enumerate(printer.comments) if i not in printer.used]
    if leftovers:
        if printer.lines:
            printer.lines.append("")
        printer.lines += [c.text.rstrip() for c in leftovers]
    return "\n".join(printer.lines).rstrip("\n") + "\n"
