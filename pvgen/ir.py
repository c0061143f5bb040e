"""The IR: one frozen, validated model of the whole spec. Backends read only this."""

from __future__ import annotations

import attrs

from pvgen.source import SourceSpan

# Categories of op, in the words of Documentation/virt/paravirt_ops.rst.
INDIRECT = "indirect"
PATCHABLE = "patchable"
ASM_MACRO = "asm_macro"
CATEGORIES = (INDIRECT, PATCHABLE, ASM_MACRO)

# Kinds of implementation.
IMPL_ASM = "asm"
IMPL_CALL = "call"
IMPL_NOP = "nop"
IMPL_IDENTITY = "identity"
IMPL_NATIVE = "native"
IMPL_KINDS = (IMPL_ASM, IMPL_CALL, IMPL_NOP, IMPL_IDENTITY, IMPL_NATIVE)

NATIVE = "native"


X86_MAX_INSTRUCTION = 15  # bytes: the longest x86 instruction, prefixes included


@attrs.frozen
class Constant:
    name: str
    value: int
    span: SourceSpan


@attrs.frozen
class Arch:
    """An architecture: its ABI and the shape of a patchable call site."""

    name: str
    doc: str
    span: SourceSpan
    pointer_size: int
    data_model: str
    registers: tuple[str, ...]
    args: tuple[str, ...]
    returns: tuple[str, ...]
    caller_saved: tuple[str, ...]
    callee_saved: tuple[str, ...]
    callee_save_clobbers: tuple[str, ...]
    clobber_bits: tuple[tuple[str, int], ...]
    site_call: str
    site_jump: str | None
    site_size: int
    direct_call_size: int
    site_type_bits: int
    nops: tuple[str, ...]
    pad_prefix: str | None  # hex of the redundant prefix that pads a patched instruction (x86-64: CS, 2e)
    pad_prefix_limit: int  # at most this many pad prefixes per instruction (0: pad with NOPs only)
    assembler: str
    template: tuple[str, ...]
    constants: tuple[Constant, ...]
    identity: str | None  # the template that patches an `identity` op (x86-64: mov %rdi, %rax)
    isa: str  # "x86_64" | "ia64": how templates are decoded and patched


@attrs.frozen
class Detection:
    """One way a hypervisor is detected on one arch."""

    arch: str
    method: str  # "cpuid" | "boot_entry" | "default"
    leaf: int | None
    signature: str | None
    symbol: str | None
    hypervisor_type: int | None
    span: SourceSpan


@attrs.frozen
class Hypervisor:
    name: str
    doc: str
    span: SourceSpan
    arches: tuple[str, ...]
    detections: tuple[Detection, ...]
    execution: str  # "bare" | "hvm" | "pv"
    paravirt_enabled: bool
    native_fallback: tuple[tuple[str, str], ...]  # (arch, group)
    constants: tuple[Constant, ...]


@attrs.frozen
class CType:
    """A C type as the ABI sees it."""

    text: str
    size: int
    kind: str  # "void" | "integer" | "pointer"


@attrs.frozen
class Param:
    name: str
    ctype: CType
    span: SourceSpan


@attrs.frozen
class Impl:
    """What one hypervisor does for an op (after resolving `native` and fallback)."""

    hypervisor: str
    kind: str  # asm | call | nop | identity
    text: str | None  # asm text or called symbol
    span: SourceSpan  # where it is written (the native line for a fallback)
    source: str  # "declared" | "native" (written `native`) | "fallback" (no line)
    # For a `call` of a callee_save op: the target itself keeps every register but the
    # return register (Linux's __PV_IS_CALLEE_SAVE); otherwise a thunk must save them.
    preserves_registers: bool = False
    # For `asm`: a body that is always called out of line, never copied into a site.
    out_of_line: bool = False


@attrs.frozen
class Variant:
    """A per-register template of an op (IA64 getreg/setreg)."""

    name: str
    reg_id: int
    patch_type: int
    doc: str
    span: SourceSpan
    impls: tuple[Impl, ...]
    clobbers: tuple[str, ...]  # the op's, plus the register the variant writes by design


@attrs.frozen
class Effect:
    """What an op must do under one hypervisor: an expression the generated tests evaluate."""

    hypervisor: str
    expression: str
    span: SourceSpan


@attrs.frozen
class Op:
    name: str
    group: str
    arch: str
    doc: str
    span: SourceSpan
    returns: CType
    params: tuple[Param, ...]
    category: str
    transfer: str  # "call" | "jump"
    callee_save: bool
    clobbers: tuple[str, ...]
    index: int  # slot in the arch's op template (x86) or patch type (IA64)
    impls: tuple[Impl, ...]  # one per hypervisor of the arch, sorted by name
    variants: tuple[Variant, ...]
    effects: tuple[Effect, ...] = ()

    @property
    def qualname(self) -> str:
        return f"{self.group}.{self.name}"

    def impl(self, hypervisor: str) -> Impl:
        return next(i for i in self.impls if i.hypervisor == hypervisor)


@attrs.frozen
class DataValue:
    hypervisor: str
    value: int | str | bool
    span: SourceSpan
    source: str


@attrs.frozen
class DataField:
    name: str
    doc: str
    span: SourceSpan
    ctype: CType
    values: tuple[DataValue, ...]


@attrs.frozen
class Group:
    name: str
    arch: str
    doc: str
    span: SourceSpan
    struct: str
    override_required: bool
    ops: tuple[Op, ...]
    data: tuple[DataField, ...]
    mask_bit: int | None


@attrs.frozen
class MacroParam:
    name: str
    kind: str  # gr | pr | kr | clobbers
    role: str  # in | out | clobber
    span: SourceSpan


@attrs.frozen
class Expansion:
    hypervisor: str
    text: str
    span: SourceSpan
    source: str


@attrs.frozen
class Macro:
    name: str
    arch: str
    doc: str
    span: SourceSpan
    params: tuple[MacroParam, ...]
    via: str | None  # group.op
    expansions: tuple[Expansion, ...]


@attrs.frozen
class Mask:
    """The forced-native mask: a bit per group, set from the kernel command line."""

    name: str
    arch: str
    doc: str
    span: SourceSpan
    cmdline: str
    bits: tuple[tuple[str, int], ...]  # (group, bit), by bit


@attrs.frozen
class Yield:
    name: str
    arch: str
    doc: str
    span: SourceSpan
    function: str
    when: str
    hypervisors: tuple[str, ...]  # those under which it yields


@attrs.frozen
class IommuEntry:
    detect: str
    arch: str
    doc: str
    span: SourceSpan
    depends: str | None
    early_init: str | None
    late_init: str | None
    finish: bool
    buses: tuple[str, ...]
    found_under: tuple[str, ...]


@attrs.frozen
class Typedef:
    name: str
    target: str
    doc: str
    span: SourceSpan


@attrs.frozen
class Spec:
    """The whole checked spec. Collections are sorted so backends iterate deterministically."""

    files: tuple[str, ...]
    arches: tuple[Arch, ...]
    hypervisors: tuple[Hypervisor, ...]
    typedefs: tuple[Typedef, ...]
    groups: tuple[Group, ...]  # by arch, then template order, then name
    macros: tuple[Macro, ...]
    masks: tuple[Mask, ...]
    yields: tuple[Yield, ...]
    iommu: tuple[IommuEntry, ...]  # by arch, then dependency order

    def ops(self, arch: str | None = None) -> tuple[Op, ...]:
        return tuple(op for g in self.groups if arch in (None, g.arch) for op in g.ops)


@attrs.frozen
class Relocation:
    """A reference a template makes outside itself, which the patcher must fix up."""

    offset: int  # byte offset of the relocated field (IA64: the tag, bundle address | slot)
    kind: str  # e.g. "brl" (IA64 PCREL60B)
    symbol: str


@attrs.frozen
class Template:
    """An asm implementation assembled and verified: the bytes a patcher may copy to a site."""

    arch: str
    hypervisor: str
    owner: str  # "group.op", "group.op[VARIANT]" or the macro name
    text: str
    code: bytes
    instructions: tuple[str, ...]  # decoded, one per instruction, for listings
    written: tuple[str, ...]  # registers the template writes (within the arch's register list)
    relocations: tuple[Relocation, ...]
    fits_site: bool
    out_of_line: bool
    span: SourceSpan
    # (offset, count): where a patcher may add the arch's pad prefix, and how many (x86 only).
    pad_room: tuple[tuple[int, int], ...] = ()


@attrs.frozen
class Build:
    """The checked spec plus its assembled templates: everything a backend may read."""

    spec: Spec
    templates: tuple[Template, ...]  # by arch, owner, hypervisor
    assemblers: tuple[tuple[str, str], ...]  # (arch, assembler version line)

    def template(self, arch: str, owner: str, hypervisor: str) -> Template | None:
        for template in self.templates:
            if (template.arch, template.owner, template.hypervisor) == (arch, owner, hypervisor):
                return template
        return None
