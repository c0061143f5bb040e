"""C types: sizes of the types in op signatures, per data model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pvgen.ir import CType

_QUALIFIERS = {"const", "volatile", "__iomem", "__user", "restrict"}
_C_WORDS = {"void", "char", "short", "int", "long", "signed", "unsigned", "bool", "_Bool", "struct", "union", "enum"}

_FIXED = {
    "u8": 1,
    "s8": 1,
    "__u8": 1,
    "u16": 2,
    "s16": 2,
    "__u16": 2,
    "u32": 4,
    "s32": 4,
    "__u32": 4,
    "u64": 8,
    "s64": 8,
    "__u64": 8,
}
_LONG_SIZE = {"LP64": 8, "ILP32": 4}
_POINTER_SIZED = {"size_t", "ssize_t", "uintptr_t", "intptr_t"}

BUILTIN_NAMES = tuple(sorted(set(_FIXED) | _POINTER_SIZED | {"void", "bool", "char", "short", "int", "long"}))


def is_c_word(word: str) -> bool:
    return word in _C_WORDS or word in _QUALIFIERS


def resolve(
    words: Sequence[str], data_model: str, typedefs: Mapping[str, Sequence[str]], seen: frozenset[str] = frozenset()
) -> CType | str:
    """The CType of a declaration's type words, or an error message."""
    text = _canonical_text(words)
    words = [w for w in words if w not in _QUALIFIERS]
    if not words:
        return "missing type"
    pointer_size = _LONG_SIZE[data_model] if data_model in _LONG_SIZE else 8
    if "*" in words:
        base = words[: words.index("*")]
        if not base:
            return "pointer without a base type"
        if words[words.index("*") :].count("*") != len(words) - words.index("*"):
            return f"'{text}' has words after its '*'"
        if base[0] not in ("struct", "union", "enum"):
            pointee = resolve(base, data_model, typedefs, seen)
            if isinstance(pointee, str) and "passed by value" not in pointee:  # a pointer to a struct is fine
                return pointee
        elif len(base) != 2:
            return f"'{' '.join(base)}' needs exactly one tag name"
        return CType(text, pointer_size, "pointer")
    if words[0] in ("struct", "union"):
        return f"'{text}' is passed by value; pass a pointer or declare a typedef"
    if words[0] == "enum":
        return CType(text, 4, "integer")
    if len(words) == 1:
        word = words[0]
        if word == "void":
            return CType("void", 0, "void")
        if word in ("bool", "_Bool"):
            return CType(word, 1, "integer")
        if word in _FIXED:
            return CType(word, _FIXED[word], "integer")
        if word in _POINTER_SIZED:
            return CType(word, pointer_size, "integer")
        if word in typedefs:
            if word in seen:
                return f"typedef '{word}' refers to itself"
            target = resolve(typedefs[word], data_model, typedefs, seen | {word})
            if isinstance(target, str):
                return target
            return CType(word, target.size, target.kind)
    size = _integer_size(words, _LONG_SIZE.get(data_model, 8))
    if size is None:
        unknown = next((w for w in words if w not in _C_WORDS), None)
        return f"unknown type '{unknown}'" if unknown else f"'{text}' is not a C type"
    return CType(text, size, "integer")


def _canonical_text(words: Sequence[str]) -> str:
    out = ""
    for word in words:
        if word == "*":
            out += " *" if not out.endswith("*") else "*"
        else:
            out += ("" if not out or out.endswith("*") else " ") + word
    return out


def _integer_size(words: Sequence[str], long_size: int) -> int | None:
    rest = [w for w in words if w not in ("signed", "unsigned")]
    if words.count("signed") + words.count("unsigned") > 1:
        return None
    if rest == [] and words:
        return 4  # plain `unsigned`
    longs = rest.count("long")
    others = [w for w in rest if w != "long"]
    if others in ([], ["int"]) and longs:
        return {1: long_size, 2: 8}.get(longs)
    if others == ["int"] and not longs:
        return 4
    if others in (["short"], ["short", "int"]) and not longs:
        return 2
    if others == ["char"] and not longs:
        return 1
    return None
