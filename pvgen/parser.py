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

from pvgen.diagnostics import Diagnostic
from pvgen.source import SourceSpan
from pvgen.syntax import Comment, Entry, Param, SyntaxFile, Value

# Terminal names as a spec author would say them.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "STRING": "a string",
    "LONG_STRING": "a string",
    "STAR": "'*'",
    "DOC": "a doc comment",
    "LBRACE": "'{'",
    "SEMI": "';'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "SEMICOLON": "';'",
    "COMMA": "','",
    "COLON": "':'",
    "$END": "end of file",
}

_ESCAPE = re.compile(r'\\([\\"])')


def _span(path: str, token: Any) -> SourceSpan:
    return SourceSpan(path, token.line, token.column, token.end_line, token.end_column)


def decode_string(text: str) -> str:
    """The value of a string literal as written in the source."""
    if text.startswith('"""'):
        body = text[3:-3]
        if body.startswith("\n"):
            body = body[1:]
        return textwrap.dedent(body).rstrip()
    return _ESCAPE.sub(r"\1", text[1:-1])


class _ToEntries(Transformer[Token, Any]):
    """Builds syntax nodes while Lark parses (no intermediate parse tree)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _value(self, token: Token) -> Value:
        kind = token.type
        text = str(token)
        span = SourceSpan(self.path, token.line, token.column, token.end_line, token.end_column)  # type: ignore[arg-type]
        if kind == "NAME":
            return Value("name", text, text, span)
        if kind == "INT":
            return Value("int", text, int(text, 0), span)
        if kind == "STAR":
            return Value("star", text, text, span)
        return Value("string", text, decode_string(text), span)

    def start(self, children: list[Entry]) -> tuple[Entry, ...]:
        return tuple(children)

    def group(self, children: list[Token]) -> tuple[Value, ...]:
        return tuple(map(self._value, children))

    words = group

    def groups(self, children: list[tuple[Value, ...]]) -> tuple[tuple[Value, ...], ...]:
        return tuple(children)

    def param(self, children: list[Any]) -> Param:
        words, annotation = children[0], children[1] or ()
        last = (annotation or words)[-1]
        return Param(words, annotation, words[0].span.to(last.span))

    def params(self, children: list[Param | None]) -> tuple[Param, ...]:
        return tuple(p for p in children if p is not None)

    def header(self, children: list[Any]) -> tuple[Any, Any]:
        if len(children) == 2:
            return children[0], children[1]
        if children and isinstance(children[0], tuple) and children[0] and isinstance(children[0][0], Param):
            return (), children[0]
        if children and children[0] == ():
            return (), ()
        return children[0], None

    def semi(self, children: list[Token]) -> tuple[None, SourceSpan]:
        return None, _span(self.path, children[0])

    def block(self, children: list[Any]) -> tuple[tuple[Entry, ...], SourceSpan]:
        return tuple(children[1:-1]), _span(self.path, children[-1])

    def DOC(self, token: Token) -> Token:
        return token

    def entry(self, children: list[Any]) -> Entry:
        docs = [c for c in children if isinstance(c, Token) and c.type == "DOC"]
        rest = [c for c in children if not (isinstance(c, Token) and c.type == "DOC")]
        keyword: Value = self._value(rest[0])
        groups: tuple[tuple[Value, ...], ...] = ()
        params: tuple[Param, ...] | None = None
        if len(rest) == 3:
            groups, params = rest[1]
        body, end = rest[-1]
        start = _span(self.path, docs[0]) if docs else keyword.span
        return Entry(
            docs=tuple(str(d)[3:].strip() for d in docs),
            keyword=str(keyword.value),
            keyword_span=keyword.span,
            groups=groups,
            params=params,
            children=body,
            span=SourceSpan(self.path, start.line, start.col, end.end_line, end.end_col),
        )


@lru_cache(maxsize=1)
def _grammar() -> str:
    return resources.files("pvgen").joinpath("grammar.lark").read_text()


_TOKEN = re.compile(
    r"""(?P<WS>[ \t\r\n\f]+)
    |(?P<DOC>///[^\n]*)
    |(?P<COMMENT>//[^\n]*)
    |(?P<LONG_STRING>\"\"\"(?:.|\n)*?\"\"\")
    |(?P<STRING>"(?:\\.|[^"\\\n])*")
    |(?P<INT>-?(?:0[xX][0-9a-fA-F]+|[0-9]+)(?![A-Za-z0-9_]))
    |(?P<NAME>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    |(?P<PUNCT>[{}();,:*])""",
    re.VERBOSE,
)
_new_str = str.__new__
_PUNCTUATION = {
    "{": "LBRACE",
    "}": "RBRACE",
    "(": "LPAR",
    ")": "RPAR",
    ";": "SEMI",
    ",": "COMMA",
    ":": "COLON",
    "*": "STAR",
}


class _SpecLexer(Lexer):
    """A single-regex lexer for Lark's LALR parser: the same terminals, several times faster.

    Comments go to `sink` instead of the parser, so the formatter can put them back.
    """

    sink: ClassVar[list[Token]] = []  # the comments of the file being parsed (one parse at a time)

    def __init__(self, lexer_conf: Any) -> None:
        del lexer_conf

    def lex(self, data: str) -> Iterator[Token]:  # type: ignore[override]
        match_at = _TOKEN.match
        line, line_start, pos, end = 1, 0, 0, len(data)
        while pos < end:
            match = match_at(data, pos)
            if match is None:
                raise lark.exceptions.UnexpectedCharacters(data, pos, line, pos - line_start + 1)
            kind = match.lastgroup
            text = match.group()
            next_pos = match.end()
            newlines = text.count("\n") if kind in ("WS", "LONG_STRING") else 0
            if kind != "WS":
                if kind == "PUNCT":
                    kind = _PUNCTUATION[text]
                end_line = line + newlines
                end_col = (next_pos - text.rfind("\n") - pos) if newlines else (pos - line_start + 1 + len(text))
                # Token.__new__ is slow (it handles deprecated arguments); fill the slots directly.
                token = _new_str(Token, text)
                token.type = kind
                token.start_pos = pos
                token.line = line
                token.column = pos - line_start + 1
                token.end_line = end_line
                token.end_column = end_col
                token.end_pos = next_pos
                if kind == "COMMENT":
                    self.sink.append(token)
                else:
                    yield token
            if newlines:
                line += newlines
                line_start = pos + text.rfind("\n") + 1
            pos = next_pos


class _Parser:
    """The one Lark parser of the process, with its transformer and comment sink."""

    def __init__(self) -> None:
        self.comments = _SpecLexer.sink
        self.transformer = _ToEntries("")
        self.lark = Lark(
            _grammar(),
            parser="lalr",
            lexer=_SpecLexer,
            maybe_placeholders=True,
            transformer=self.transformer,
        )


@lru_cache(maxsize=1)
def _parser() -> _Parser:
    return _Parser()


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    word = _TERMINAL_WORDS.get(token.type, repr(str(token)))
    if token.type in ("NAME", "INT", "STRING"):
        return f"{word} '{token}'" if len(str(token)) <= 40 else word
    return word


_PREFERENCE = ["SEMI", "LBRACE", "RBRACE", "LPAR", "RPAR", "COMMA", "COLON", "NAME", "INT", "STRING", "STAR", "DOC"]


def _expected(names: set[str]) -> str:
    ranked = sorted(names, key=lambda n: (_PREFERENCE.index(n) if n in _PREFERENCE else 99, n))
    words: list[str] = []
    for name in ranked:
        word = _TERMINAL_WORDS.get(name, name.lower())
        if word not in words:
            words.append(word)
    return ", ".join(words)


def _syntax_error(path: str, error: lark.exceptions.LarkError, text: str) -> Diagnostic:
    if isinstance(error, lark.exceptions.UnexpectedToken):
        token = error.token
        if token.type == "$END":
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
            span = SourceSpan(path, line, col, line, col + 1)
        else:
            span = _span(path, token)
        message = f"unexpected {_describe_token(token)}; expected {_expected(error.expected)}"
        return Diagnostic(span, message)
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        line, col = error.line, error.column
        char = text.splitlines()[line - 1][col - 1] if line - 1 < len(text.splitlines()) else ""
        if char == '"':
            message = "unterminated string"
        elif char.isdigit() or char == "-":
            message = "malformed number"
        else:
            message = f"unexpected character {char!r}"
        return Diagnostic(SourceSpan(path, line, col, line, col + 1), message)
    if isinstance(error, lark.exceptions.UnexpectedEOF):
        lines = text.splitlines() or [""]
        span = SourceSpan(path, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
        return Diagnostic(span, f"unexpected end of file; expected {_expected(set(error.expected))}")
    return Diagnostic(SourceSpan(path, 1, 1, 1, 2), f"cannot parse: {error}")


def parse_text(path: str, text: str) -> tuple[SyntaxFile | None, Diagnostic | None]:
    """Parses one file. Returns the syntax tree, or the first syntax error."""
    parser = _parser()
    parser.comments.clear()
    parser.transformer.path = path
    try:
        entries = parser.lark.parse(text)
    except lark.exceptions.UnexpectedInput as error:
        return None, _syntax_error(path, error, text)
    except lark.exceptions.VisitError as error:  # a malformed literal inside a transformer
        return None, Diagnostic(SourceSpan(path, 1, 1, 1, 2), f"cannot parse: {error.orig_exc}")
    kept = tuple(Comment(str(c), _span(path, c)) for c in parser.comments)
    return SyntaxFile(path, entries, kept), None
