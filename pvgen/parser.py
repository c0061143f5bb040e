"""Parser: .pvspec text to the entry AST, through Lark's LALR parser, with readable syntax errors."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from typing import Any, ClassVar

import lark
from lark import Lark, Token, Transformer
from lark.lexer import Lexer
from lark.parsers.lalr_analysis import Shift

from pvgen.diagnostics import Diagnostic
from pvgen.source import SourceSpan
from pvgen.syntax import Comment, Entry, Param, SyntaxFile, Value

# Terminal names as a spec author would say them.
_TERMINAL_WORDS = {
    "WORDS": "a name",
    "DOC": "a doc comment",
    "SEMI": "';'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "COLON": "':'",
    "$END": "end of file",
}
_PREFERENCE = ["SEMI", "LBRACE", "RBRACE", "LPAR", "RPAR", "COMMA", "COLON", "WORDS", "DOC"]

_TOKEN = re.compile(
    r"""[ \t\r\n\f]*(?:
     (?P<DOC>///[^\n]*)
    |(?P<COMMENT>//[^\n]*)
    |(?P<LONG>\"\"\"(?:.|\n)*?\"\"\")
    |(?P<OPEN_LONG>\"\"\")
    |(?P<STRING>"(?:\\.|[^"\\\n])*")
    |(?P<INT>-?(?:0[xX][0-9a-fA-F]+|[0-9]+)(?![A-Za-z0-9_.]))
    |(?P<NAME>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    |(?P<STAR>\*)
    |(?P<PUNCT>[{}();,:])
    |(?P<EOF>\Z))""",
    re.VERBOSE,
)
_PUNCTUATION = {"{": "LBRACE", "}": "RBRACE", "(": "LPAR", ")": "RPAR", ";": "SEMI", ",": "COMMA", ":": "COLON"}
_VALUE_KINDS = {"NAME": "name", "INT": "int", "STRING": "string", "LONG": "string", "STAR": "star"}
_ESCAPE = re.compile(r'\\([\\"])')
_new_str = str.__new__
MAX_INT_CHARS = 40  # 0x and 128 bits fit with room; longer literals are mistakes
MAX_NESTING = 32  # blocks inside blocks; the real spec uses 3


class SpecSyntaxError(Exception):
    """A syntax error found while building an entry (after the LALR parser accepted the tokens)."""

    def __init__(self, span: SourceSpan, message: str) -> None:
        super().__init__(message)
        self.span = span
        self.message = message


def decode_string(text: str) -> str:
    """The value of a string literal as written in the source."""
    if text.startswith('"""'):
        body = text[3:-3]
        if body.startswith("\n"):
            body = body[1:]
        return textwrap.dedent(body).rstrip()
    return _ESCAPE.sub(r"\1", text[1:-1])


class _Words(Token):
    """A WORDS token: a run of values written side by side, already turned into Values."""

    __slots__ = ("words",)
    words: tuple[Value, ...]


def _skip_space(data: str, pos: int) -> int:
    while pos < len(data) and data[pos] in " \t\r\n\f":
        pos += 1
    return pos


def _token(cls: type[Token], kind: str, text: str, pos: int, line: int, col: int, end_line: int, end_col: int) -> Any:
    # Token.__new__ is slow (it handles deprecated arguments); fill the slots directly.
    token = _new_str(cls, text)
    token.type = kind
    token.start_pos = pos
    token.line = line
    token.column = col
    token.end_line = end_line
    token.end_column = end_col
    token.end_pos = pos + len(text)
    return token


class _SpecLexer(Lexer):
    """A single-regex lexer for Lark's LALR parser.

    Values written side by side become one WORDS token, which keeps the token count (and
    so the parse time) low. Comments go to `sink`, so the formatter can put them back.
    """

    sink: ClassVar[list[Token]] = []  # the comments of the file being parsed (one parse at a time)
    path: ClassVar[str] = ""

    def __init__(self, lexer_conf: Any) -> None:
        del lexer_conf

    def lex(self, data: str) -> Iterator[Token]:  # type: ignore[override]
        path = self.path
        match_at = _TOKEN.match
        line, line_start, pos = 1, 0, 0
        words: list[Value] = []
        first: tuple[int, int, int] | None = None  # pos, line, col of the pending WORDS token
        depth = 0
        count = data.count
        while True:
            match = match_at(data, pos)
            kind = match.lastgroup if match is not None else None
            if kind is None or kind == "EOF":
                start = match.start() if kind else pos
                gap_lines = count("\n", pos, start if kind else _skip_space(data, pos))
                if gap_lines:
                    line += gap_lines
                    line_start = data.rfind("\n", pos, start if kind else _skip_space(data, pos)) + 1
                if kind == "EOF":
                    break
                if words:
                    yield self._words(words, first)
                    words = []
                bad = _skip_space(data, pos)
                raise lark.exceptions.UnexpectedCharacters(data, bad, line, bad - line_start + 1)
            pos = match.start(kind)
            gap_lines = count("\n", match.start(), pos)
            if gap_lines:
                line += gap_lines
                line_start = data.rfind("\n", 0, pos) + 1
            text = match.group(kind)
            next_pos = match.end()
            col = pos - line_start + 1
            newlines = text.count("\n") if kind == "LONG" else 0
            end_line = line + newlines
            end_col = (next_pos - (pos + text.rfind("\n"))) if newlines else col + len(text)
            value_kind = _VALUE_KINDS.get(kind)
            if value_kind is not None:
                span = SourceSpan(path, line, col, end_line, end_col)
                if value_kind == "name" or value_kind == "star":
                    value: str | int = text
                elif value_kind == "int":
                    if len(text) > MAX_INT_CHARS:
                        raise SpecSyntaxError(span, f"integer literal of {len(text)} characters is too long")
                    negative = text.startswith("-")
                    digits = text.lstrip("-")
                    value = int(digits[2:], 16) if digits[:2] in ("0x", "0X") else int(digits, 10)
                    value = -value if negative else value
                else:
                    value = decode_string(text)
                if not words:
                    first = (pos, line, col)
                words.append(Value(value_kind, text, value, span))
            elif kind == "OPEN_LONG":
                raise SpecSyntaxError(SourceSpan(path, line, col, line, col + 3), "unterminated string")
            elif kind == "COMMENT":
                self.sink.append(_token(Token, "COMMENT", text, pos, line, col, end_line, end_col))
            else:
                if words:
                    yield self._words(words, first)
                    words = []
                token_kind = "DOC" if kind == "DOC" else _PUNCTUATION[text]
                if token_kind == "LBRACE":
                    depth += 1
                    if depth > MAX_NESTING:
                        raise SpecSyntaxError(
                            SourceSpan(path, line, col, line, col + 1), f"blocks nest deeper than {MAX_NESTING} levels"
                        )
                elif token_kind == "RBRACE":
                    depth -= 1
                yield _token(Token, token_kind, text, pos, line, col, end_line, end_col)
            if newlines:
                line = end_line
                line_start = pos + text.rfind("\n") + 1
            pos = next_pos
        if words:
            yield self._words(words, first)

    @staticmethod
    def _words(words: list[Value], first: tuple[int, int, int] | None) -> Token:
        assert first is not None
        last = words[-1].span
        token = _token(_Words, "WORDS", words[0].text, first[0], first[1], first[2], last.end_line, last.end_col)
        token.words = tuple(words)
        return token


class _ToEntries(Transformer[Token, Any]):
    """Builds syntax nodes at each LALR reduction (no intermediate parse tree)."""

    def __init__(self) -> None:
        super().__init__()
        self.path = ""

    def start(self, children: list[Entry]) -> tuple[Entry, ...]:
        return tuple(children)

    def param(self, children: list[Any]) -> Param:
        words: tuple[Value, ...] = children[0].words
        annotation: tuple[Value, ...] = children[1].words if children[1] is not None else ()
        return Param(words, annotation, words[0].span.to((annotation or words)[-1].span))

    def params(self, children: list[Param | None]) -> tuple[Param, ...]:
        return tuple(p for p in children if p is not None)

    def semi(self, children: list[Token]) -> tuple[None, Token]:
        return None, children[0]

    def block(self, children: list[Any]) -> tuple[tuple[Entry, ...], Token]:
        return tuple(children[1:-1]), children[-1]

    def entry(self, children: list[Any]) -> Entry:
        docs = []
        index = 0
        while children[index].type == "DOC":
            docs.append(children[index])
            index += 1
        head: tuple[Value, ...] = children[index].words
        keyword = head[0]
        if keyword.kind != "name":
            raise SpecSyntaxError(keyword.span, f"an entry starts with a name, not '{keyword.text}'")
        groups = [head[1:]] if len(head) > 1 else []
        params: tuple[Param, ...] | None = None
        for child in children[index + 1 : -1]:
            if isinstance(child, Token):
                if len(head) == 1 and not groups:
                    raise SpecSyntaxError(keyword.span, f"a value is missing after '{keyword.text}', before ','")
                groups.append(child.words)
            else:
                params = child
        body, end = children[-1]
        start_line, start_col = (docs[0].line, docs[0].column) if docs else (keyword.span.line, keyword.span.col)
        return Entry(
            docs=tuple(str(d)[3:].strip() for d in docs),
            keyword=str(keyword.value),
            keyword_span=keyword.span,
            groups=tuple(groups),
            params=params,
            children=body,
            span=SourceSpan(self.path, start_line, start_col, end.end_line, end.end_column),
        )


@lru_cache(maxsize=1)
def _grammar() -> str:
    return resources.files("pvgen").joinpath("grammar.lark").read_text()


class _Parser:
    """The one Lark parser of the process: its LALR tables, reduction callbacks and lexer."""

    def __init__(self) -> None:
        self.transformer = _ToEntries()
        self.lark = Lark(
            _grammar(), parser="lalr", lexer=_SpecLexer, maybe_placeholders=True, transformer=self.transformer
        )
        frontend = self.lark.parser.parser.parser
        self.tables = frontend.parse_table
        self.callbacks = frontend.callbacks


@lru_cache(maxsize=1)
def _parser() -> _Parser:
    return _Parser()


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "WORDS":
        text = str(token)
        return f"'{text}'" if len(text) <= 40 else "a value"
    return _TERMINAL_WORDS.get(token.type, repr(str(token)))


def _expected(names: set[str]) -> str:
    ranked = sorted(names, key=lambda n: (_PREFERENCE.index(n) if n in _PREFERENCE else 99, n))
    words: list[str] = []
    for name in ranked:
        word = _TERMINAL_WORDS.get(name, name.lower())
        if word not in words:
            words.append(word)
    return ", ".join(words)


def _syntax_error(path: str, error: Exception, text: str) -> Diagnostic:
    lines = text.split("\n")
    if isinstance(error, SpecSyntaxError):
        return Diagnostic(error.span, error.message)
    if isinstance(error, lark.exceptions.UnexpectedToken):
        token = error.token
        if token.type == "$END":
            line, col = token.end_line or 1, token.end_column or 1
            span = SourceSpan(path, line, col, line, col + 1)
        else:
            span = SourceSpan(path, token.line, token.column, token.end_line, token.end_column)  # type: ignore[arg-type]
        return Diagnostic(span, f"unexpected {_describe_token(token)}; expected {_expected(set(error.expected))}")
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        line, col = error.line, error.column
        char = lines[line - 1][col - 1] if line - 1 < len(lines) and col - 1 < len(lines[line - 1]) else ""
        if char == '"':
            message = "unterminated string"
        elif char.isdigit() or char == "-":
            message = "malformed number"
        else:
            message = f"unexpected character {char!r}"
        return Diagnostic(SourceSpan(path, line, col, line, col + 1), message)
    return Diagnostic(SourceSpan(path, 1, 1, 1, 2), f"cannot parse: {error}")


def _reduce(states: Any, state_stack: list[Any], value_stack: list[Any], rule: Any, callbacks: Any) -> None:
    size = len(rule.expansion)
    if size:
        children = value_stack[-size:]
        del state_stack[-size:]
        del value_stack[-size:]
    else:
        children = []
    value_stack.append(callbacks[rule](children))
    state_stack.append(states[state_stack[-1]][rule.origin.name][1])


def _drive(parser: _Parser, text: str) -> Any:
    """Runs Lark's LALR tables over the token stream.

    The same shift/reduce loop as Lark's own parser state, kept in one frame: on large
    specs the per-token method call and attribute lookups were a large part of the time.
    """
    tables = parser.tables
    states = tables.states
    state_stack = [tables.start_states["start"]]
    value_stack: list[Any] = []
    callbacks = parser.callbacks
    last: Token | None = None
    for token in _SpecLexer(None).lex(text):
        last = token
        kind = token.type
        while True:
            row = states[state_stack[-1]]
            if kind not in row:
                raise lark.exceptions.UnexpectedToken(token, {s for s in row if s.isupper()})
            action, arg = row[kind]
            if action is Shift:
                state_stack.append(arg)
                value_stack.append(token)
                break
            _reduce(states, state_stack, value_stack, arg, callbacks)
    end = Token("$END", "", 0, 1, 1) if last is None else Token.new_borrow_pos("$END", "", last)
    end_state = tables.end_states["start"]
    while state_stack[-1] != end_state:
        row = states[state_stack[-1]]
        if "$END" not in row:
            raise lark.exceptions.UnexpectedToken(end, {s for s in row if s.isupper()})
        _reduce(states, state_stack, value_stack, row["$END"][1], callbacks)
    return value_stack[-1]


def parse_text(path: str, text: str) -> tuple[SyntaxFile | None, Diagnostic | None]:
    """Parses one file. Returns the syntax tree, or the first syntax error."""
    parser = _parser()
    _SpecLexer.sink.clear()
    _SpecLexer.path = path
    parser.transformer.path = path
    try:
        entries = _drive(parser, text)
    except (lark.exceptions.UnexpectedInput, SpecSyntaxError) as error:
        return None, _syntax_error(path, error, text)
    kept = tuple(
        Comment(str(c), SourceSpan(path, c.line, c.column, c.end_line, c.end_column))  # type: ignore[arg-type]
        for c in _SpecLexer.sink
    )
    return SyntaxFile(path, entries, kept), None
