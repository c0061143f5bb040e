"""Backend: emits asm macro includes: x86 .S macros and one IA64 header per pv instance.

Every spec macro becomes a GNU as `.macro __pvgen_NAME` holding the expansion text as the
spec writes it (parameters stay `\\name`), plus a cpp wrapper `#define NAME(args)` so .S
files call it in the Linux style (`DISABLE_INTERRUPTS(CLBR_NONE)`, `MOV_FROM_IFA(r16)`).
Gas macros keep multi-line bodies and `\\name` references intact, which cpp macros cannot.

Arches whose ops live in a slot table (`template`) get one header with a paravirt form
(each `via` macro is a patch site calling through `pv_ops`) and per-instance forms chosen
by `-D`. Arches without a table (IA64) get one header per pv instance, as Linux builds
ivt.S/entry.S once per instance, plus a checking instance (pvchk) where the arch has one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import attrs

from pvgen import ir
from pvgen.backends import ASM, Output, banner, render_template

TABLE_SYMBOL = "pv_ops"  # the C backend's `struct pv_ops_template pv_ops`
SITES_SECTION = ".pvgen.sites"
SITE_RECORD_SIZE = 16  # .quad site; .byte index; .byte length; .short clobbers; padded to 8
# A site covers the saves, the call and the restores; its clobbers are what the call may write.
GAS_PREFIX = "__pvgen_"
NATIVE_MODE = "PVGEN_NATIVE"  # the brief's spelling of PVGEN_INSTANCE_NATIVE on x86
KR_COUNT = 8  # IA64 kernel registers ar.k0-ar.k7 (docs/language.md, kind `kr`)

# A parameter-less macro whose expansions are all one upper-case name is an alias of a
# cpp macro defined elsewhere (IA64 DO_SAVE_MIN -> IA64_NATIVE_DO_SAVE_MIN / XEN_DO_SAVE_MIN),
# whose arguments pass through unchanged. The IR has no expansion kind for this.
_ALIAS = re.compile(r"[A-Z_][A-Z0-9_]*")


@attrs.frozen
class Checker:
    """An arch's pvchk scheme: what may not appear raw in a paravirtualised .S, and the
    instructions a check must keep in place of a control transfer (ia64_pvops.md §3.3).

    This is arch knowledge the spec does not declare yet; it belongs in `arch` blocks."""

    sensitive: tuple[tuple[str, str], ...]  # (cpp token, what it is), sorted by token
    returns: tuple[str, ...]  # native first mnemonics that end control flow
    return_check: str  # stands for such a macro (a nop would upset dependency checking)
    empty_check: str  # stands for a macro with nothing to check


_CHECKERS: dict[str, Checker] = {
    "ia64": Checker(
        sensitive=(
            ("bsw", "bsw.0/bsw.1"),
            ("cover", "cover"),
            ("cpuid", "cpuid[] register read"),
            ("cr", "cr.* (control register access)"),
            ("eflag", "ar.eflag"),
            ("fc", "fc"),
            ("itc", "itc.i/itc.d or ar.itc"),
            ("pmd", "pmd[] register access"),
            ("ptc", "ptc.*"),
            ("rfi", "rfi"),
            ("rsm", "rsm"),
            ("ssm", "ssm"),
            ("thash", "thash"),
            ("ttag", "ttag"),
        ),
        returns=("rfi",),
        return_check="br.ret.sptk.many rp",
        empty_check="nop 0",
    ),
}


@attrs.frozen
class MacroView:
    """One macro as printed: comment, cpp wrapper lines and, unless an alias, a gas macro."""

    comment: tuple[str, ...]  # the lines of the block comment, ` * ` included
    location: str  # spec/x.pvspec:LINE
    gas_header: str | None  # `.macro __pvgen_NAME a:req, b:req`; None for an alias
    body: tuple[str, ...]  # lines between .macro and .endm, indented, cpp directives included
    defines: tuple[str, ...]  # the cpp lines that give NAME its Linux call form


@attrs.frozen
class Constant:
    """A `#define` of the header: name, value and the comment beside it."""

    name: str
    value: str
    comment: str


@attrs.frozen
class SiteHeaderView:
    """The slot-table form (x86): CLBR_* sets, slot offsets and every macro."""

    banner: str
    arch: str
    guard: str
    modes: tuple[str, ...]  # ` -DMACRO   what it selects`, aligned
    native_mode: str
    instance_test: str  # cpp expression counting the instance macros defined
    clobber_defines: tuple[str, ...]
    offset_defines: tuple[str, ...]
    table: str
    section: str
    record_size: int
    site_size: int
    macros: tuple[MacroView, ...]


@attrs.frozen
class InstanceHeaderView:
    """One pv instance of a per-instance arch (IA64): every macro for that instance."""

    banner: str
    arch: str
    instance: str
    guard: str
    description: tuple[str, ...]
    macros: tuple[MacroView, ...]
    poisons: tuple[tuple[str, str], ...]  # pvchk: (token, .error text)


@attrs.frozen
class SelectorView:
    banner: str
    arch: str
    lines: tuple[str, ...]  # #if / #elif / #else chain of #include lines


def _comment_text(text: str) -> str:
    return text.replace("*/", "* /")


def _instance_macro(hypervisor: str) -> str:
    return f"PVGEN_INSTANCE_{hypervisor.upper()}"


def _clobber_name(register: str) -> str:
    return "CLBR_" + re.sub(r"[^A-Za-z0-9]", "_", register).upper()


def _offset_name(op: ir.Op) -> str:
    return f"PV_OP_{op.group.upper()}_{op.name.upper()}_OFFSET"


def _signature(macro: ir.Macro) -> str:
    params = ", ".join(p.name for p in macro.params)
    return f"{macro.name}({params})" if macro.params else macro.name


def _is_alias(macro: ir.Macro) -> bool:
    return not macro.params and all(_ALIAS.fullmatch(e.text) for e in macro.expansions)


def _gas_header(macro: ir.Macro) -> str:
    params = ", ".join(f"{p.name}:req" for p in macro.params)
    return f".macro {GAS_PREFIX}{macro.name}" + (f" {params}" if params else "")


def _wrapper(macro: ir.Macro) -> str:
    """The cpp line that turns the Linux call form into a gas macro invocation."""
    if not macro.params:
        return f"#define {macro.name} {GAS_PREFIX}{macro.name}"
    # A clobbers set is an expression (`CLBR_RAX | CLBR_RCX`); parentheses keep its spaces
    # from splitting it into several gas macro arguments.
    args = ", ".join(f"({p.name})" if p.kind == "clobbers" else p.name for p in macro.params)
    return f"#define {_signature(macro)} {GAS_PREFIX}{macro.name} {args}"


def _lines(text: str) -> list[str]:
    return [f"\t{line}" if line else "" for line in text.split("\n")] if text else []


def _comment(macro: ir.Macro, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The lines of the block comment above a macro (` * text`): signature, doc, notes."""
    lines = [_signature(macro)]
    lines += [_comment_text(line) for line in macro.doc.split("\n")] if macro.doc else []
    lines += list(extra)
    return tuple(f" * {line}".rstrip() for line in lines)


def _defines(constants: Sequence[Constant]) -> tuple[str, ...]:
    """Aligned `#define NAME VALUE /* comment */` lines."""
    name_width = max((len(c.name) for c in constants), default=0)
    value_width = max((len(c.value) for c in constants), default=0)
    return tuple(
        f"#define {c.name:<{name_width}} {c.value:<{value_width}} /* {_comment_text(c.comment)} */" for c in constants
    )


def _grouped(expansions: Sequence[ir.Expansion], order: Sequence[str]) -> list[tuple[list[str], str]]:
    """Hypervisors with the same expansion text share one branch; branches follow `order`."""
    by_name = {e.hypervisor: e for e in expansions}
    groups: list[tuple[list[str], str]] = []
    for hypervisor in order:
        text = by_name[hypervisor].text
        for names, seen in groups:
            if seen == text:
                names.append(hypervisor)
                break
        else:
            groups.append(([hypervisor], text))
    return groups


def _bits(arch: ir.Arch, registers: Sequence[str]) -> int:
    table = dict(arch.clobber_bits)
    value = 0
    for register in registers:
        value |= 1 << table[register] if register in table else 0
    return value


class _SiteForm:
    """The paravirt form of a `via` macro on a slot-table arch (AT&T syntax, x86-64)."""

    def __init__(self, arch: ir.Arch, ops: dict[str, ir.Op]) -> None:
        self.arch = arch
        self.ops = ops
        self.bits = dict(arch.clobber_bits)

    def describe(self, macro: ir.Macro) -> str:
        if macro.via is None:
            if len({e.text for e in macro.expansions}) == 1:
                return "paravirt form: the one expansion of every instance (no via)"
            return "paravirt form: none (no via and the expansions differ): an .error"
        op = self.ops[macro.via]
        convention = "callee-save" if op.callee_save else "clobbers " + (", ".join(op.clobbers) or "nothing")
        return (
            f"paravirt form: {op.transfer} site through {op.qualname} "
            f"(slot {op.index}, {TABLE_SYMBOL}+{op.index * self.arch.pointer_size}), {convention}"
        )

    def body(self, macro: ir.Macro) -> list[str]:
        if macro.via is None:
            texts = sorted({e.text for e in macro.expansions})
            if len(texts) == 1:
                return _lines(texts[0])
            return [f'\t.error "pvgen: {macro.name} has no paravirt form (no via); build one pv instance"']
        op = self.ops[macro.via]
        clobbers = next((p for p in macro.params if p.kind == "clobbers"), None)
        outputs = [p for p in macro.params if p.kind == "gr" and p.role == "out"]
        inputs = [p for p in macro.params if p.kind == "gr" and p.role != "out"]
        if inputs or len(outputs) > 1:
            return [f'\t.error "pvgen: {macro.name}: a paravirt site passes no register operands to {op.qualname}"']
        saves: list[tuple[list[str], str]] = []
        if op.transfer == "call":
            for register in op.clobbers:
                guards = []
                if clobbers is not None and register in self.bits:
                    guards.append(f".if ((\\{clobbers.name}) & {_clobber_name(register)}) == 0")
                if outputs:  # the output register receives the result: never restore over it
                    guards.append(f".ifnc \\{outputs[0].name},%{register}")
                saves.append((guards, register))
        slot = f"{TABLE_SYMBOL}+{_offset_name(op)}"
        site = self.arch.site_jump if op.transfer == "jump" else self.arch.site_call
        if site is None:
            return [f'\t.error "pvgen: {macro.name}: arch {self.arch.name} declares no site_jump for {op.qualname}"']
        # The site is the whole sequence, as Linux's PARA_SITE: the saves, the indirect call
        # (and the move of a result) and the restores, so patching can replace all of it.
        lines = [".Lpvgen_site_\\@:"]
        lines += [line for guards, reg in saves for line in self._guarded(guards, f"pushq %{reg}")]
        lines.append("\t" + site.replace("{slot}", slot))
        if outputs and op.returns.kind != "void":
            lines.append(f"\tmovq %{self.arch.returns[0]}, \\{outputs[0].name}")
        lines += [line for guards, reg in reversed(saves) for line in self._guarded(guards, f"popq %{reg}")]
        lines.append(".Lpvgen_site_end_\\@:")
        recorded = f"{_bits(self.arch, op.clobbers):#x}"
        if clobbers is not None:
            recorded = f"(\\{clobbers.name})" + (f" | {recorded}" if recorded != "0x0" else "")
        lines += [
            f'\t.pushsection {SITES_SECTION}, "a"',
            "\t.balign 8",
            "\t.quad .Lpvgen_site_\\@",
            f"\t.byte {op.index}",
            "\t.byte .Lpvgen_site_end_\\@ - .Lpvgen_site_\\@",
            f"\t.short {recorded}",
            "\t.balign 8",
            "\t.popsection",
        ]
        return lines

    @staticmethod
    def _guarded(guards: Sequence[str], instruction: str) -> list[str]:
        return [f"\t{g}" for g in guards] + [f"\t{instruction}"] + ["\t.endif"] * len(guards)


def _site_header(build: ir.Build, arch: ir.Arch, macros: Sequence[ir.Macro], sources: Sequence[str]) -> Output:
    spec = build.spec
    hypervisors = [h.name for h in spec.hypervisors if arch.name in h.arches]
    order = sorted(hypervisors, key=lambda h: (h != ir.NATIVE, h))  # native first
    ops = [op for op in spec.ops(arch.name) if op.group in arch.template]
    form = _SiteForm(arch, {op.qualname: op for op in ops})
    views = []
    for macro in macros:
        groups = _grouped(macro.expansions, order)
        paravirt = form.body(macro)
        if len(groups) == 1 and _lines(groups[0][1]) == paravirt:
            body = paravirt  # the same under every instance: no conditionals
        else:
            body = []
            for position, (names, text) in enumerate(groups):
                test = " || ".join(f"defined({_instance_macro(n)})" for n in names)
                body += [f"#{'el' if position else ''}if {test}", *_lines(text)]
            body += ["#else", *paravirt, "#endif"]
        views.append(
            MacroView(
                comment=_comment(macro, [form.describe(macro)]),
                location=macro.span.location,
                gas_header=_gas_header(macro),
                body=tuple(body),
                defines=(_wrapper(macro),),
            )
        )
    all_bits = _bits(arch, [r for r, _ in arch.clobber_bits])
    clobber_sets = [Constant("CLBR_NONE", "0x0", "no register")]
    clobber_sets += [Constant(_clobber_name(r), f"{1 << bit:#x}", f"%{r}") for r, bit in arch.clobber_bits]
    clobber_sets += [
        Constant("CLBR_ANY", f"{all_bits:#x}", "every register with a bit"),
        Constant(
            "CLBR_CALLEE_SAVE",
            f"{all_bits & ~_bits(arch, arch.callee_save_clobbers):#x}",
            "what a callee-save op keeps: all but " + ", ".join(f"%{r}" for r in arch.callee_save_clobbers),
        ),
    ]
    offsets = [Constant(_offset_name(op), str(op.index * arch.pointer_size), op.span.location) for op in ops]
    modes = [("(none)", f"paravirt: a via macro is a patch site calling through {TABLE_SYMBOL}")]
    modes += [(f"-D{NATIVE_MODE}", "the native expansions (bare metal; no pv_ops, no sites)")]
    modes += [(f"-D{_instance_macro(h)}", f"the {h} expansions (one pv instance, no sites)") for h in order[1:]]
    width = max(len(flag) for flag, _ in modes)
    view = SiteHeaderView(
        banner=banner("/*", sources),
        arch=arch.name,
        guard=f"PVGEN_ASM_{arch.name.upper()}_PVOPS_ASM_H",
        modes=tuple(f"{flag:<{width}}  {what}" for flag, what in modes),
        native_mode=NATIVE_MODE,
        instance_test=" + ".join(f"defined({_instance_macro(h)})" for h in sorted(hypervisors)),
        clobber_defines=_defines(clobber_sets),
        offset_defines=_defines(offsets),
        table=TABLE_SYMBOL,
        section=SITES_SECTION,
        record_size=SITE_RECORD_SIZE,
        site_size=arch.site_size,
        macros=tuple(views),
    )
    text = render_template("asm_site_header.h.mako", view=view)
    return Output(f"asm/{arch.name}/pvops_asm.h", text, ASM)


def _instance_macro_view(macro: ir.Macro, hypervisor: str) -> MacroView:
    text = next(e.text for e in macro.expansions if e.hypervisor == hypervisor)
    if _is_alias(macro):
        return MacroView(_comment(macro), macro.span.location, None, (), (f"#define {macro.name} {text}",))
    return MacroView(_comment(macro), macro.span.location, _gas_header(macro), tuple(_lines(text)), (_wrapper(macro),))


def _role_check(param: ir.MacroParam) -> list[str]:
    """A check that the operand fits its role and kind, with no sensitive instruction."""
    name = f"\\{param.name}"
    if param.kind == "gr" and param.role == "in":
        return [f"mov pr = {name}, 0"]  # reads the register; mask 0 writes no predicate
    if param.kind == "gr":  # out or clobber: must be a writable general register
        return [
            ";;",
            f"mov {name} = r0",
            f".ifc {name},r0",  # gas only warns about writing r0
            f'.error "pvchk: {param.name} ({param.role}) is written, so it cannot be r0"',
            ".endif",
            ";;",
        ]
    if param.kind == "pr" and param.role == "in":
        return [f"({name}) nop 0"]
    if param.kind == "pr":
        return [f"cmp.eq {name}, p0 = r0, r0"]
    if param.kind == "kr":
        return [
            f".if ({name}) < 0 || ({name}) > {KR_COUNT - 1}",
            f'.error "pvchk: kernel register index {name} is not 0..{KR_COUNT - 1}"',
            ".endif",
        ]
    return [f".if ({name}) & 0", ".endif"]  # clobbers: an absolute expression


def _checking_macro_view(macro: ir.Macro, checker: Checker) -> MacroView:
    if _is_alias(macro):
        return MacroView(
            _comment(macro), macro.span.location, None, (), (f"#define {macro.name}(...) {checker.empty_check}",)
        )
    checks: list[str] = []
    for line in (line for param in macro.params for line in _role_check(param)):
        if not (line == ";;" and checks and checks[-1] == ";;"):  # one stop between two checks
            checks.append(line)
    if not checks:
        native = next(e.text for e in macro.expansions if e.hypervisor == ir.NATIVE).split()
        checks = [checker.return_check if native and native[0] in checker.returns else checker.empty_check]
    return MacroView(
        _comment(macro), macro.span.location, _gas_header(macro), tuple(f"\t{c}" for c in checks), (_wrapper(macro),)
    )


def _poisons(macros: Sequence[ir.Macro], checker: Checker) -> tuple[tuple[str, str], ...]:
    """Each sensitive token becomes an .error naming the macros whose native form uses it."""
    poisons = []
    for token, what in checker.sensitive:
        pattern = re.compile(rf"(?<!\w){re.escape(token)}(?!\w)")  # a whole cpp identifier
        users = sorted(
            m.name for m in macros for e in m.expansions if e.hypervisor == ir.NATIVE and pattern.search(e.text)
        )
        advice = f"use {', '.join(users)}" if users else "no pv asm macro stands for it"
        poisons.append((token, f"pvchk: privilege-sensitive {what} in a paravirtualised .S; {advice}"))
    return tuple(poisons)


def _instance_headers(
    build: ir.Build, arch: ir.Arch, macros: Sequence[ir.Macro], sources: Sequence[str]
) -> list[Output]:
    hypervisors = sorted(h.name for h in build.spec.hypervisors if arch.name in h.arches)
    outputs: list[Output] = []
    choices: list[tuple[str, str]] = []
    for hypervisor in hypervisors:
        view = InstanceHeaderView(
            banner=banner("/*", sources),
            arch=arch.name,
            instance=hypervisor,
            guard=f"PVGEN_ASM_{arch.name.upper()}_INST_{hypervisor.upper()}_H",
            description=(f"The {hypervisor} instance: each macro expands to its {hypervisor} expansion.",),
            macros=tuple(_instance_macro_view(m, hypervisor) for m in macros),
            poisons=(),
        )
        path = f"inst_{hypervisor}.h"
        outputs.append(Output(f"asm/{arch.name}/{path}", render_template("asm_instance_header.h.mako", view=view), ASM))
        if hypervisor != ir.NATIVE:
            choices.append((_instance_macro(hypervisor), path))
    checker = _CHECKERS.get(arch.isa)
    if checker is not None:
        view = InstanceHeaderView(
            banner=banner("/*", sources),
            arch=arch.name,
            instance="pvchk",
            guard=f"PVGEN_ASM_{arch.name.upper()}_INST_PVCHK_H",
            description=(
                "The checking instance (pvchk): each macro becomes a check that its operands fit",
                "their roles and contains no sensitive instruction, and a raw sensitive",
                "instruction or register in the .S becomes an assembler error. Never linked.",
            ),
            macros=tuple(_checking_macro_view(m, checker) for m in macros),
            poisons=_poisons(macros, checker),
        )
        outputs.append(
            Output(f"asm/{arch.name}/inst_pvchk.h", render_template("asm_instance_header.h.mako", view=view), ASM)
        )
        choices.insert(0, ("PVGEN_INSTANCE_PVCHK", "inst_pvchk.h"))
    lines: list[str] = []
    for position, (flag, path) in enumerate(choices):
        lines += [f"#{'el' if position else ''}if defined({flag})", f'#include "{path}"']
    if ir.NATIVE in hypervisors:
        lines += ["#else" if lines else "", f'#include "inst_{ir.NATIVE}.h"']
    lines += ["#endif"] if choices else []
    selector = SelectorView(banner("/*", sources), arch.name, tuple(line for line in lines if line))
    outputs.append(
        Output(f"asm/{arch.name}/inst.h", render_template("asm_instance_selector.h.mako", view=selector), ASM)
    )
    return outputs


class AsmMacroBackend:
    """Emits asm macro includes: x86 .S macros and one IA64 header per pv instance."""

    name: ClassVar[str] = "asm_macros"

    def render(self, build: ir.Build, sources: Sequence[str]) -> list[Output]:
        outputs: list[Output] = []
        for arch in build.spec.arches:
            macros = sorted((m for m in build.spec.macros if m.arch == arch.name), key=lambda m: m.span)
            if not macros:
                continue
            if arch.template:
                outputs.append(_site_header(build, arch, macros, sources))
            else:
                outputs += _instance_headers(build, arch, macros, sources)
        return outputs
