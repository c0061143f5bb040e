"""Backend: emits C headers, tables and call wrappers with patch-site records, per arch.

Per arch, `c/<arch>/pvops.h` holds the op indexes, X-macro lists, the ops structs, the
prototypes of every implementation and a `static inline` wrapper per op callable from C;
`c/<arch>/pvops_tables.c` holds the tables (live, native and one per hypervisor) and the
asm bodies, shared helpers and callee-save thunks they point at.

A wrapper is a recorded patch site in a paravirt build and the native implementation,
inline, under PVGEN_NATIVE. x86-style arches get the arch's `site_call` through the slot
plus a 16-byte `.pvgen.sites` record; IA64 gets the 5-bundle pv_cpu_ops stub inside a
`.paravirt_bundles` record (sbundle, ebundle, type).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import ClassVar

import attrs

from pvgen import ir
from pvgen.backends import C, Output, banner, render_template

_IA64 = "ia64"
_REGISTER = "unsigned long"  # the C type of one general register
_DIRECTIVES = {1: ".byte", 2: ".short", 4: ".long", 8: ".quad"}
_QUALIFIERS = ("__iomem", "__user")  # kernel annotations that mean nothing to gcc
_C_WORDS = frozenset(
    "void char short int long signed unsigned bool _Bool struct union enum const volatile restrict".split()
)
# Stand-ins for the kernel's own types, for a standalone compile.
_KERNEL_TYPES = {
    "u8": "unsigned char",
    "u16": "unsigned short",
    "u32": "unsigned int",
    "u64": "unsigned long long",
    "s8": "signed char",
    "s16": "short",
    "s32": "int",
    "s64": "long long",
    "__u8": "unsigned char",
    "__u16": "unsigned short",
    "__u32": "unsigned int",
    "__u64": "unsigned long long",
    "size_t": "__SIZE_TYPE__",
    "ssize_t": "__PTRDIFF_TYPE__",
    "uintptr_t": "__UINTPTR_TYPE__",
    "intptr_t": "__INTPTR_TYPE__",
}
# A narrower result is masked off the return register (PVOP_RETVAL): the callee may leave
# the upper bits undefined.
_MASK_TYPES = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int"}
_X86_NARROW = {
    "rax": ("eax", "ax", "al"),
    "rbx": ("ebx", "bx", "bl"),
    "rcx": ("ecx", "cx", "cl"),
    "rdx": ("edx", "dx", "dl"),
    "rsi": ("esi", "si", "sil"),
    "rdi": ("edi", "di", "dil"),
    "rbp": ("ebp", "bp", "bpl"),
}
_IA64_RETURN = "b6"  # where the stub expects a body to return
_IA64_STUB_REGISTERS = ("r16", "r17")  # the stub's saved gp and return point
# __PARAVIRT_BR (ia64_pvops.md §2.2): r2 = &slot; load the function descriptor; b6 = the
# return point (3 bundles on); branch through b7; restore gp at the return point.
_IA64_STUB = """\
;;
{ .mlx
nop 0
movl r2 = %[slot]
;;
}
1:
{ .mii
ld8 r2 = [r2]
mov r17 = ip
mov r16 = gp
;;
}
{ .mii
ld8 r3 = [r2], 8
adds r17 = 1f - 1b, r17
;;
mov b7 = r3
}
{ .mib
ld8 gp = [r2]
mov b6 = r17
br.cond.sptk.few b7
}
1:
{ .mii
mov gp = r16
nop 0
nop 0
;;
}"""


# -- views --------------------------------------------------------------------------------------


@attrs.frozen
class Line:
    """One printed entry and its spec back-reference."""

    text: str
    location: str


@attrs.frozen
class StructView:
    what: str
    name: str
    members: tuple[Line, ...]
    location: str


@attrs.frozen
class TypesView:
    """What a standalone compile must declare: kernel types, spec typedefs, opaque names."""

    kernel: tuple[str, ...]
    typedefs: tuple[Line, ...]
    opaque: tuple[str, ...]
    qualifiers: tuple[str, ...]
    structs: tuple[str, ...]


@attrs.frozen
class WrapperView:
    """A `static inline` call wrapper: its paravirt and native bodies, as indented C lines."""

    qualname: str
    signature: str
    location: str
    paravirt: tuple[str, ...]
    native: tuple[str, ...]


@attrs.frozen
class HeaderView:
    guard: str
    arch: str
    ia64: bool
    index_defines: tuple[Line, ...]
    ops_macro: tuple[str, ...]
    groups_macro: tuple[str, ...]
    types: TypesView
    structs: tuple[StructView, ...]
    externs: tuple[str, ...]
    slot_checks: tuple[str, ...]
    prototypes: tuple[Line, ...]
    site_macros: tuple[str, ...]
    wrappers: tuple[WrapperView, ...]


@attrs.frozen
class AsmFunction:
    """A function written in asm in the tables file: its C declaration and top-level asm lines."""

    what: str
    location: str
    declaration: str
    lines: tuple[str, ...]  # C string literals, one per asm line


@attrs.frozen
class TableGroup:
    member: str | None  # the template member it initializes, None for a table of its own
    fields: tuple[Line, ...]


@attrs.frozen
class TableView:
    declaration: str  # "const struct pv_ops_template pv_ops_xen"
    what: str
    groups: tuple[TableGroup, ...]


# -- C text -------------------------------------------------------------------------------------


def _identifier(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text)


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _number(value: int) -> str:
    return str(value) if -256 < value < 256 else hex(value)


def _declare(ctype: str, name: str) -> str:
    """A declarator after its type: `int x`, `char *x`."""
    return f"{ctype}{name}" if ctype.endswith("*") else f"{ctype} {name}"


def _params(op: ir.Op) -> str:
    return ", ".join(_declare(p.ctype.text, p.name) for p in op.params) or "void"


def _function(op: ir.Op, name: str) -> str:
    return _declare(op.returns.text, f"{name}({_params(op)})")


def _function_type(op: ir.Op) -> str:
    return _declare(op.returns.text, f"(*)({', '.join(p.ctype.text for p in op.params) or 'void'})")


def _returns(op: ir.Op) -> bool:
    return op.returns.kind != "void"


def _clobber_mask(arch: ir.Arch, registers: Iterable[str]) -> int:
    bits = dict(arch.clobber_bits)
    return sum(1 << bits[r] for r in registers if r in bits)


def _macro(head: str, entries: Sequence[str]) -> tuple[str, ...]:
    """A multi-line #define, its continuation backslashes aligned one column past the longest line."""
    lines = [f"#define {head}", *(f"\t{entry}" for entry in entries)]
    width = max(len(line.expandtabs()) for line in lines) + 1
    return (*(line + " " * (width - len(line.expandtabs())) + "\\" for line in lines[:-1]), lines[-1])


def _asm_lines(lines: Sequence[str], separator: str) -> list[str]:
    """Asm lines as C string literals, each but the last ending in `separator`."""
    return [_c_string(line + (separator if i < len(lines) - 1 else "")) for i, line in enumerate(lines)]


def _quoted(registers: Iterable[str]) -> list[str]:
    return [f'"{r}"' for r in registers]


# -- the shape of a call on one arch --------------------------------------------------------------


@attrs.frozen
class _Shape:
    """How one arch calls an op from C: its site, its registers, its asm quoting."""

    arch: ir.Arch

    @property
    def ia64(self) -> bool:
        return self.arch.isa == _IA64

    @property
    def c_name(self) -> str:
        return _identifier(self.arch.name).upper()

    @property
    def site_macro(self) -> str:
        return f"PVGEN_{self.c_name}_SITE"

    @property
    def stub_macro(self) -> str:
        return f"PVGEN_{self.c_name}_STUB"

    @property
    def asm_clobbers(self) -> list[str]:
        return ['"memory"'] if self.ia64 else ['"memory"', '"cc"']

    def site_macros(self) -> tuple[str, ...]:
        """The patch-site #defines: the asm of a site and of its record."""
        if self.ia64:
            stub = _macro(self.stub_macro, [_c_string(line + "\n") for line in _IA64_STUB.split("\n")])
            record = [
                '.pushsection .paravirt_bundles, "a"',
                ".popsection",
                '.xdata8 ".paravirt_bundles", 998b, 999b, %[type]',
            ]
            site = [_c_string("\t998:\n"), self.stub_macro, _c_string("\t999:\n")]
            site += [_c_string(f"\t{line}\n") for line in record]
            return (*stub, "", *_macro(self.site_macro, site))
        # The slot is an "i" operand printed into the arch's site_call: given an "m" operand,
        # gcc may address the slot through a register it keeps across callee-save sites
        # (`ff 91 disp32`), which is not the shape the patcher rewrites.
        size = self.arch.pointer_size
        call = self.arch.site_call.replace("%", "%%").replace("{slot}", "%c[slot]")
        record = ['.pushsection .pvgen.sites, "a"', f".balign {size}", f"{_DIRECTIVES[size]} 771b"]
        record += [f"{_DIRECTIVES.get(self.arch.site_type_bits // 8, '.quad')} %c[type]", ".byte 772b-771b"]
        record += [".short %c[clobbers]", f".balign {size}", ".popsection"]
        back = f"movq %%{self.arch.returns[0]}, %%{self.arch.args[0]}"
        return (
            *_macro(self.site_macro, _asm_lines(["771:", call, "772:", *record], "\n\t")),
            "",
            "/* The site of an op whose native form is the identity: the result goes back into the",
            " * argument register, so that natively the site does nothing at all. */",
            *_macro(self.in_place_macro, _asm_lines(["771:", call, back, "772:", *record], "\n\t")),
        )

    @property
    def in_place_macro(self) -> str:
        return f"PVGEN_{self.c_name}_SITE_IN_PLACE"

    def in_place(self, op: ir.Op) -> bool:
        """Whether an op's site leaves its result in its first argument register: a patchable
        op whose native form is the identity (pte_val, make_pte, ...), so that a native
        kernel patches the site to nothing rather than to a register move."""
        return (
            not self.ia64
            and op.category == ir.PATCHABLE
            and op.impl(ir.NATIVE).kind == ir.IMPL_IDENTITY
            and _returns(op)
            and bool(op.params)
        )

    def reads(self, text: str, register: str) -> bool:
        """Whether an asm template names the register, at any width."""
        if self.ia64:
            return re.search(rf"(?<![\w.]){re.escape(register)}(?!\w)", text) is not None
        names = {register, *_X86_NARROW.get(register, ())}
        if re.fullmatch(r"r\d+", register):
            names |= {register + suffix for suffix in "dwb"}
        return re.search(rf"%({'|'.join(sorted(names))})\b", text) is not None

    def inline(self, text: str) -> list[str]:
        """An asm template as the string literals of an extended asm statement."""
        text = text.replace("%", "%%")
        if not self.ia64:  # x86 gcc reads {|} as assembler-dialect alternatives
            text = re.sub(r"([{|}])", r"%\1", text)
        return _asm_lines([line.strip() for line in text.strip().split("\n") if line.strip()], "\n\t")


# -- wrapper bodies -----------------------------------------------------------------------------


@attrs.frozen
class _Operand:
    register: str
    value: str | None  # the argument it carries in
    written: bool  # an output: the result, or a register the call may change


def _arg_registers(arch: ir.Arch, op: ir.Op) -> list[tuple[ir.Param, str]]:
    """The argument register of each parameter.

    An op with per-register variants (IA64 getreg/setreg) passes its selector, the first
    parameter, after the others: setreg takes the value in r8 and the register id in r9,
    which is what the variants' templates read.
    """
    params = list(op.params)
    if op.variants and params:
        params = params[1:] + params[:1]
    return list(zip(params, arch.args, strict=False))


def _operand_lines(pad: str, operands: Sequence[str], width: int = 92) -> list[str]:
    """`: a, b`, wrapped under the first operand past `width` columns (the body is one tab in)."""
    if not operands:
        return [pad + ":"]
    lines = [pad + ": " + operands[0]]
    for operand in operands[1:]:
        if len(lines[-1]) + len(operand) + 2 > width:
            lines[-1] += ","
            lines.append(pad + "  " + operand)
        else:
            lines[-1] += ", " + operand
    return lines


def _asm_statement(lines: Sequence[str], outputs: list[str], inputs: list[str], clobbers: list[str]) -> list[str]:
    """An extended asm statement: on one line when short, else one operand class per line."""
    head = "asm volatile("
    if len(lines) == 1 and len(", ".join([lines[0], *outputs, *inputs, *clobbers])) < 72:
        text = head + lines[0]
        for operands in (outputs, inputs, clobbers):
            text += " :" + (" " + ", ".join(operands) if operands else "")
        return [text + ");"]
    pad = " " * len(head)
    out = [head + lines[0], *(pad + line for line in lines[1:])]
    for operands in (outputs, inputs, clobbers):
        out += _operand_lines(pad, operands)
    out[-1] += ");"
    return out


def _result(op: ir.Op, variable: str) -> str:
    mask = _MASK_TYPES.get(op.returns.size) if op.returns.kind == "integer" else None
    return f"({op.returns.text})" + (f"({mask}){variable}" if mask else variable)


def _register_body(
    op: ir.Op,
    shape: _Shape,
    operands: Sequence[_Operand],
    asm: Sequence[str],
    extra_inputs: Sequence[str],
    clobbers: Sequence[str],
    statements: Sequence[str] = (),
    result: str | None = None,
) -> list[str]:
    """Register variables for the operands, other statements, the asm, then the (masked) result."""
    body = [
        f'register {_REGISTER} reg_{_identifier(o.register)} asm("{o.register}")'
        + (f" = ({_REGISTER}){o.value};" if o.value is not None else ";")
        for o in operands
    ]
    if body:
        body.append("")
    body += statements
    outputs = [f'"{"=+"[o.value is not None]}r" (reg_{_identifier(o.register)})' for o in operands if o.written]
    inputs = [*extra_inputs, *(f'"r" (reg_{_identifier(o.register)})' for o in operands if not o.written)]
    body += _asm_statement(asm, outputs, inputs, [*shape.asm_clobbers, *clobbers])
    if _returns(op):
        body.append(f"return {_result(op, 'reg_' + _identifier(result or shape.arch.returns[0]))};")
    return body


def _site_body(op: ir.Op, shape: _Shape, asm: str, inputs: list[str], in_place: bool = False) -> list[str]:
    """A call through the slot: arguments in, the result out (in the first argument register
    for an `in_place` site), every other op clobber declared."""
    result = shape.arch.args[0] if in_place else shape.arch.returns[0]
    operands: dict[str, _Operand] = {}
    for param, register in _arg_registers(shape.arch, op):
        written = register in op.clobbers or (_returns(op) and register == result)
        operands[register] = _Operand(register, param.name, written)
    if _returns(op) and result not in operands:
        operands[result] = _Operand(result, None, True)
    others = _quoted(r for r in op.clobbers if r not in operands)
    return _register_body(op, shape, list(operands.values()), [asm], inputs, others, result=result)


def _void(op: ir.Op, used: Iterable[str] = ()) -> list[str]:
    return [f"(void){p.name};" for p in op.params if p.name not in set(used)]


def _native_asm_body(op: ir.Op, shape: _Shape, text: str, written: Sequence[str]) -> list[str]:
    """A native template, inline: the arguments it reads in their ABI registers, what it writes out."""
    result = shape.arch.returns[0] if _returns(op) else None
    operands: list[_Operand] = []
    for param, register in _arg_registers(shape.arch, op):
        if shape.reads(text, register):
            operands.append(_Operand(register, param.name, register in written or register == result))
    if result is not None and all(o.register != result for o in operands):
        operands.append(_Operand(result, None, True))
    taken = {o.register for o in operands}
    clobbers = _quoted(r for r in shape.arch.registers if r in written and r not in taken)
    used = [o.value for o in operands if o.value is not None]
    return _register_body(op, shape, operands, shape.inline(text), [], clobbers, _void(op, used))


# -- the backend --------------------------------------------------------------------------------


class CBackend:
    """Emits C headers, tables and call wrappers with patch-site records, per arch."""

    name: ClassVar[str] = "c"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        outputs = []
        for arch in build.spec.arches:
            groups = [g for g in build.spec.groups if g.arch == arch.name]
            if not groups:
                continue
            layer = _Layer(build, arch, groups)
            outputs.append(Output(f"c/{arch.name}/pvops.h", layer.header(sources), C))
            outputs.append(Output(f"c/{arch.name}/pvops_tables.c", layer.tables(sources), C))
        return outputs


class _Layer:
    """One arch's pv_ops layer, as the header and tables views see it."""

    def __init__(self, build: ir.Build, arch: ir.Arch, groups: list[ir.Group]) -> None:
        self.build = build
        self.arch = arch
        self.shape = _Shape(arch)
        self.groups = groups
        self.in_template = [g for g in groups if g.name in arch.template]
        self.ops = [op for g in groups for op in g.ops]
        self.wrapped = [op for op in self.ops if op.category != ir.ASM_MACRO and op.transfer == "call"]
        hypervisors = [h.name for h in build.spec.hypervisors if arch.name in h.arches]
        self.hypervisors = sorted(hypervisors, key=lambda h: (h != ir.NATIVE, h))
        # The asm functions the tables point at, collected as the slots are filled.
        self.helpers: dict[str, AsmFunction] = {}
        self.bodies: dict[str, AsmFunction] = {}
        self.thunks: dict[str, AsmFunction] = {}

    # -- names --

    def group(self, op: ir.Op) -> ir.Group:
        return next(g for g in self.groups if g.name == op.group)

    def slot(self, op: ir.Op) -> str:
        group = self.group(op)
        return f"pv_ops.{op.group}.{op.name}" if group in self.in_template else f"{group.struct}.{op.name}"

    def index_define(self, op: ir.Op, variant: ir.Variant | None = None) -> str:
        name = f"PV_OP_{op.group}_{op.name}" + (f"_{variant.name}" if variant else "")
        return re.sub("_+", "_", _identifier(name).upper())

    def type_value(self, op: ir.Op) -> str:
        """The record's type: the op's index, plus the selector for an op with variants."""
        if op.variants and op.params:
            return f"{self.index_define(op)} + ({op.params[0].name})"
        return self.index_define(op)

    def wrapper_name(self, op: ir.Op) -> str:
        """`pv_<op>`; with the group too when the op's name starts with `_` or is not unique."""
        base = op.name.lstrip("_")
        clashes = sum(1 for other in self.wrapped if other.name.lstrip("_") == base)
        return f"pv_{op.group}_{base}" if op.name.startswith("_") or clashes > 1 else f"pv_{base}"

    def tables_of(self, group: ir.Group | None) -> list[tuple[str, str, str]]:
        """(type, variable, hypervisor) of the live table and of each hypervisor's constant copy."""
        kind, live = ("struct pv_ops_template", "pv_ops") if group is None else (f"struct {group.struct}", group.struct)
        return [(kind, live, ir.NATIVE), *((f"const {kind}", f"{live}_{h}", h) for h in self.hypervisors)]

    def own_tables(self) -> list[ir.Group | None]:
        """The template (None), then every group outside it, which has a table of its own."""
        own: list[ir.Group | None] = [None] if self.in_template else []
        return own + [g for g in self.groups if g not in self.in_template]

    # -- header --

    def header(self, sources: Sequence[str]) -> str:
        c_name = self.shape.c_name
        view = HeaderView(
            guard=f"PVGEN_{c_name}_PVOPS_H",
            arch=self.arch.name,
            ia64=self.shape.ia64,
            index_defines=tuple(self.index_defines()),
            ops_macro=_macro(
                f"PVOPS_{c_name}_OPS(X)",
                [
                    f"X({op.group}, {op.name}, {_number(op.index)}, {op.category}, {op.transfer}, "
                    f"{int(op.callee_save)}, {_clobber_mask(self.arch, op.clobbers):#05x}) /* {op.span.location} */"
                    for op in self.ops
                ],
            ),
            groups_macro=_macro(
                f"PVOPS_{c_name}_GROUPS(X)",
                [
                    f"X({g.name}, {g.struct}, {-1 if g.mask_bit is None else g.mask_bit}) /* {g.span.location} */"
                    for g in self.groups
                ],
            ),
            types=self.types(),
            structs=tuple(self.structs()),
            externs=tuple(
                f"extern {kind} {name};" for group in self.own_tables() for kind, name, _ in self.tables_of(group)
            ),
            slot_checks=tuple(self.slot_checks()),
            prototypes=tuple(self.prototypes()),
            site_macros=self.shape.site_macros(),
            wrappers=tuple(self.wrapper(op) for op in self.wrapped),
        )
        return render_template("c_pvops_h.mako", banner=banner("/*", sources), v=view)

    def index_defines(self) -> list[Line]:
        defines = []
        for op in self.ops:
            if op.index >= 0:
                defines.append(Line(f"#define {self.index_define(op)} {_number(op.index)}", op.span.location))
            for variant in op.variants:
                define = f"#define {self.index_define(op, variant)} {_number(variant.patch_type)}"
                defines.append(Line(define, variant.span.location))
        if self.in_template:
            count = sum(len(g.ops) for g in self.in_template)
            defines.append(Line(f"#define PV_OP_COUNT {count}", self.arch.span.location))
            defines.append(Line(f"#define PV_OP_SLOT_SIZE {self.arch.pointer_size}", self.arch.span.location))
        return defines

    def types(self) -> TypesView:
        texts = [op.returns.text for op in self.ops] + [p.ctype.text for op in self.ops for p in op.params]
        texts += [d.ctype.text for g in self.groups for d in g.data]
        typedefs = {t.name: t for t in self.build.spec.typedefs}
        ordered: list[ir.Typedef] = []  # each after the typedefs it names
        kernel: set[str] = set()
        opaque: set[str] = set()
        structs: set[str] = set()
        qualifiers: set[str] = set()

        def visit(text: str) -> None:
            words = re.findall(r"[A-Za-z_]\w*", text)
            for before, word in zip(["", *words], words, strict=False):
                if before in ("struct", "union"):
                    structs.add(f"{before} {word};")
                elif word in _QUALIFIERS:
                    qualifiers.add(word)
                elif word in _C_WORDS or before == "enum":
                    continue
                elif word in typedefs:
                    if typedefs[word] not in ordered:
                        visit(typedefs[word].target)
                        ordered.append(typedefs[word])
                elif word in _KERNEL_TYPES:
                    kernel.add(word)
                else:
                    opaque.add(word)  # named only through pointers (the checker allows that)

        for text in texts:
            visit(text)
        return TypesView(
            kernel=tuple(f"typedef {_KERNEL_TYPES[n]} {n};" for n in _KERNEL_TYPES if n in kernel),
            typedefs=tuple(Line(f"typedef {t.target} {t.name};", t.span.location) for t in ordered),
            opaque=tuple(f"typedef struct {n} {n};" for n in sorted(opaque)),
            qualifiers=tuple(sorted(qualifiers)),
            structs=tuple(sorted(structs)),
        )

    def structs(self) -> list[StructView]:
        views = []
        for group in self.groups:
            members = [Line(_declare(d.ctype.text, d.name) + ";", d.span.location) for d in group.data]
            members += [
                Line(_declare(op.returns.text, f"(*{op.name})({_params(op)})") + ";", op.span.location)
                for op in group.ops
            ]
            views.append(StructView(f"group {group.name}", group.struct, tuple(members), group.span.location))
        if self.in_template:
            members = [Line(f"struct {g.struct} {g.name};", g.span.location) for g in self.in_template]
            what = "The op template: every op's slot, group by group"
            views.append(StructView(what, "pv_ops_template", tuple(members), self.arch.span.location))
        return views

    def slot_checks(self) -> list[str]:
        if not self.in_template:
            return []
        size, bits = self.arch.pointer_size, self.arch.site_type_bits
        check = [
            f"_Static_assert(__builtin_offsetof(struct pv_ops_template, group.op) == (index) * {size},",
            '\t       "pv_ops." #group "." #op " is not in slot " #index);',
        ]
        return [
            *_macro("PVGEN_CHECK_SLOT(group, op, index, ...)", check),
            f"PVOPS_{self.shape.c_name}_OPS(PVGEN_CHECK_SLOT)",
            "#undef PVGEN_CHECK_SLOT",
            f"_Static_assert(sizeof(struct pv_ops_template) == PV_OP_COUNT * {size}, "
            '"the template holds the ops\' slots and nothing else");',
            f'_Static_assert(PV_OP_COUNT <= {1 << bits}, "an op index must fit the {bits}-bit type of a site record");',
        ]

    def prototypes(self) -> list[Line]:
        seen: set[str] = set()
        lines = []
        for op in self.ops:
            for impl in op.impls:
                if impl.kind == ir.IMPL_CALL and impl.text is not None and impl.text not in seen:
                    seen.add(impl.text)
                    lines.append(Line("PVGEN_IMPL " + _function(op, impl.text) + ";", impl.span.location))
        return lines

    def wrapper(self, op: ir.Op) -> WrapperView:
        slot = self.slot(op)
        if op.category == ir.INDIRECT:
            call = f"{slot}({', '.join(p.name for p in op.params)})"
            paravirt = [f"return {call};" if _returns(op) else f"{call};"]
        elif self.shape.ia64:
            inputs = [f'[slot] "i" (&{slot})', f'[type] "i" ({self.type_value(op)})']
            paravirt = _site_body(op, self.shape, self.shape.site_macro, inputs)
        else:
            inputs = [f'[slot] "i" (&{slot})', f'[type] "i" ({self.type_value(op)})']
            inputs.append(f'[clobbers] "i" ({_clobber_mask(self.arch, op.clobbers):#05x})')
            in_place = self.shape.in_place(op)
            macro = self.shape.in_place_macro if in_place else self.shape.site_macro
            paravirt = _site_body(op, self.shape, macro, inputs, in_place)
        signature = "PVGEN_INLINE " + _function(op, self.wrapper_name(op))
        indent = [tuple(f"\t{line}" if line else "" for line in body) for body in (paravirt, self.native(op, slot))]
        return WrapperView(op.qualname, signature, op.span.location, *indent)

    def native(self, op: ir.Op, slot: str) -> list[str]:
        """The native implementation, inline: asm with its real registers, a direct call, or nothing."""
        impl = op.impl(ir.NATIVE)
        if impl.kind == ir.IMPL_CALL and self.shape.ia64 and op.category == ir.PATCHABLE:
            # The target keeps the stub's register convention, not C's: reach it through
            # the stub, unrecorded (nothing patches a native build).
            return _site_body(op, self.shape, self.shape.stub_macro, [f'[slot] "i" (&{slot})'])
        if impl.kind == ir.IMPL_CALL:
            call = f"{impl.text}({', '.join(p.name for p in op.params)})"
            return [f"return {call};" if _returns(op) else f"{call};"]
        if impl.kind == ir.IMPL_IDENTITY:
            first = op.params[0].name
            return [*_void(op, [first]), f"return ({op.returns.text}){first};"]
        if impl.kind == ir.IMPL_NOP:
            return [*_void(op), *(["return 0;"] if _returns(op) else [])] or ["/* nothing */"]
        template = self.build.template(self.arch.name, op.qualname, ir.NATIVE)
        return _native_asm_body(op, self.shape, impl.text or "", template.written if template else ())

    # -- tables --

    def tables(self, sources: Sequence[str]) -> str:
        tables = []
        for group in self.own_tables():
            members = self.in_template if group is None else [group]
            for index, (kind, name, hypervisor) in enumerate(self.tables_of(group)):
                what = "native at boot, until boot code copies a hypervisor's table over it" if index == 0 else ""
                parts = []
                for member in members:
                    fields = [self.data_field(d, hypervisor) for d in member.data]
                    fields += [self.slot_field(op, hypervisor) for op in member.ops]
                    parts.append(TableGroup(member.name if group is None else None, tuple(fields)))
                tables.append(
                    TableView(f"{kind} {name}", f"{name}: {what or f'the table under {hypervisor}'}", tuple(parts))
                )
        return render_template(
            "c_pvops_tables_c.mako",
            banner=banner("/*", sources),
            arch=self.arch.name,
            helpers=tuple(self.helpers[name] for name in sorted(self.helpers)),
            bodies=tuple(self.bodies.values()),
            thunks=tuple(self.thunks.values()),
            tables=tuple(tables),
        )

    def data_field(self, field: ir.DataField, hypervisor: str) -> Line:
        value = next(v for v in field.values if v.hypervisor == hypervisor)
        if isinstance(value.value, bool):
            text = "true" if value.value else "false"
        elif isinstance(value.value, int):
            text = str(value.value) if 0 <= value.value < 10 else hex(value.value)
        else:
            text = _c_string(value.value)
        return Line(f".{field.name} = {text},", value.span.location)

    def slot_field(self, op: ir.Op, hypervisor: str) -> Line:
        """The slot's initializer, creating the asm function it points at on first use."""
        impl = op.impl(hypervisor)
        cast = ""
        if impl.kind == ir.IMPL_CALL:
            target = str(impl.text)
            if op.callee_save and not impl.preserves_registers and not self.shape.ia64:
                target = f"__raw_callee_save_{impl.text}"
                self.thunks.setdefault(target, self.thunk(op, target, str(impl.text), impl.span.location))
        elif impl.kind == ir.IMPL_ASM:
            owner = hypervisor if impl.source == "declared" else ir.NATIVE  # `native` shares the native body
            target = f"pvgen_{owner}_{op.group}_{op.name}"
            if target not in self.bodies:
                self.bodies[target] = self.body(op, op.impl(owner), target)
        else:
            target, helper = self.helper(op, impl.kind)
            self.helpers.setdefault(target, helper)
            cast = f"({_function_type(op)})" if op.params or _returns(op) else ""
        return Line(f".{op.name} = {cast}{target},", impl.span.location)

    def asm_function(self, name: str, code: Sequence[str]) -> tuple[str, ...]:
        if self.shape.ia64:
            lines = ['.pushsection .text, "ax"', ".align 32", f".global {name}", f".proc {name}", f"{name}:"]
            lines += [f"\t{line}" for line in code] + [f".endp {name}", ".popsection"]
        else:
            lines = ['.pushsection .text, "ax"', f".globl {name}", f".type {name}, @function", f"{name}:"]
            lines += [f"\t{line}" for line in code] + [f".size {name}, . - {name}", ".popsection"]
        return tuple(_c_string(line + "\n") for line in lines)

    def returning(self, op: ir.Op) -> list[str]:
        """How a body returns: not at all (jump), through b6 to the IA64 stub, or as a C function."""
        if op.transfer != "call":
            return []
        if not self.shape.ia64:
            return ["ret"]
        return ["br.cond.sptk.many b6"] if op.category == ir.PATCHABLE else ["br.ret.sptk.many rp"]

    def body(self, op: ir.Op, impl: ir.Impl, name: str) -> AsmFunction:
        """An `asm` implementation out of line: the template, then the return."""
        constants = [*self.arch.constants]
        constants += [c for h in self.build.spec.hypervisors if h.name == impl.hypervisor for c in h.constants]
        code = [f".set {c.name}, {c.value:#x}" for c in constants]
        text = [line.rstrip() for line in (impl.text or "").strip().split("\n")]
        template = self.build.template(self.arch.name, op.qualname, impl.hypervisor)
        written = template.written if template else ()
        if self.shape.ia64 and op.category == ir.PATCHABLE and _IA64_RETURN in written:
            # A template that points b6 at the end of its own site (Xen's irq_restore, which
            # brl's to xen_check_events) would return into itself: keep the caller's return
            # point in a scratch register the template, the stub and the arguments leave alone.
            keep = next(
                r
                for r in self.arch.caller_saved
                if re.fullmatch(r"r\d+", r) and r not in (*written, *self.arch.args, *_IA64_STUB_REGISTERS)
            )
            text = [f"mov {keep} = {_IA64_RETURN}", ";;", *text, f"mov {_IA64_RETURN} = {keep}", ";;"]
        code += text + self.returning(op)
        what = f"{op.qualname} under {impl.hypervisor}"
        return AsmFunction(what, impl.span.location, _function(op, name) + ";", self.asm_function(name, code))

    def thunk(self, op: ir.Op, name: str, function: str, location: str) -> AsmFunction:
        """PV_CALLEE_SAVE_REGS_THUNK: keeps every register the C function may clobber but the result."""
        saved = [r for r in self.arch.caller_saved if r not in self.arch.callee_save_clobbers]
        code = ["pushq %rbp", "movq %rsp, %rbp"]  # a frame, which also aligns the stack for the call
        code += [f"pushq %{r}" for r in saved] + [f"call {function}"]
        code += [f"popq %{r}" for r in reversed(saved)] + ["popq %rbp", "ret"]
        what = f"callee-save thunk of {function} ({op.qualname})"
        return AsmFunction(what, location, _function(op, name) + ";", self.asm_function(name, code))

    def helper(self, op: ir.Op, kind: str) -> tuple[str, AsmFunction]:
        """The shared body of a `nop` (returning 0 when the op has a result) or `identity` slot."""
        stub = self.shape.ia64 and op.category == ir.PATCHABLE  # reached from the IA64 stub
        prefix = "pvgen_stub_" if stub else "pvgen_"
        ret = self.returning(op)
        if kind == ir.IMPL_IDENTITY:
            name, what = f"{prefix}ident_64", "returns its first argument"
            if self.shape.ia64:  # the stub's argument and result share r8
                code = ret if stub else ["mov r8 = r32", ";;", *ret]
            else:
                code = [self.arch.identity or f"movq %{self.arch.args[0]}, %{self.arch.returns[0]}", *ret]
        elif _returns(op):
            name, what = f"{prefix}ret0", "does nothing and returns 0"
            code = (["mov r8 = r0", ";;"] if self.shape.ia64 else ["xorl %eax, %eax"]) + ret
        else:
            name, what, code = f"{prefix}nop", "does nothing", ret
        return name, AsmFunction(what, self.arch.span.location, f"void {name}(void);", self.asm_function(name, code))
