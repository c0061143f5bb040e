${banner}
"""The ${arch.name} pv_ops layer for pvgen's runtime: op tables, patch decisions, detection, mask."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ARCH = ${repr(arch.name)}
POINTER_SIZE = ${arch.pointer_size}
SITE_SIZE = ${arch.site_size}
DIRECT_CALL_SIZE = ${arch.direct_call_size}
SITE_TYPE_BITS = ${arch.site_type_bits}
NOPS = tuple(bytes.fromhex(nop) for nop in ${repr(nops)})
IDENTITY_TEMPLATE = ${"bytes.fromhex(%r)" % identity if identity else "None"}
# A patched site is padded first with this redundant prefix, at most PAD_PREFIX_LIMIT per
# instruction and only where a template's pad room allows; the rest is NOPs.
PAD_PREFIX = ${"bytes.fromhex(%r)" % arch.pad_prefix if arch.pad_prefix else "None"}
PAD_PREFIX_LIMIT = ${arch.pad_prefix_limit}
CLOBBER_BITS = ${repr(clobber_bits)}
ARG_REGISTERS = ${repr(arch.args)}
RETURN_REGISTERS = ${repr(arch.returns)}


@dataclass(frozen=True)
class Impl:
    """What one hypervisor does for an op."""

    kind: str  # asm | call | nop | identity
    symbol: str | None  # the called function, for `call`
    template: bytes | None  # assembled bytes, for `asm`
    inline: bool  # the template may be copied into a site
    preserves_registers: bool  # a callee_save target that needs no thunk
    relocations: tuple[tuple[int, str, str], ...]
    location: str
    pad: tuple[tuple[int, int], ...]  # (offset, count): where the template may take pad prefixes


@dataclass(frozen=True)
class Op:
    name: str
    group: str
    index: int
    category: str  # indirect | patchable | asm_macro
    transfer: str  # call | jump
    callee_save: bool
    returns_value: bool
    params: tuple[str, ...]
    clobbers: tuple[str, ...]
    clobber_mask: int
    impls: dict[str, Impl]
    variants: tuple[tuple[str, int, dict[str, Impl]], ...]
    location: str


@dataclass(frozen=True)
class Hypervisor:
    name: str
    execution: str  # bare | hvm | pv
    paravirt_enabled: bool
    detections: tuple[tuple[str, int | None, str | None, str | None, int | None], ...]
    native_fallback: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """What the patcher writes at one site."""

    kind: str  # inline | call | jump | nop | indirect
    code: bytes = b""  # for inline
    symbol: str | None = None  # for call and jump
    reason: str = ""
    pad: tuple[tuple[int, int], ...] = ()  # for inline: where `code` may take pad prefixes


class MaskError(ValueError):
    """A bad forced-native mask on the kernel command line, or one the environment cannot honour."""


# The tables themselves live beside this module, in pvops_${arch.name}.json (rows, not code).
_TABLES = json.loads(Path(__file__).with_suffix(".json").read_text())
# Unique clobber sets, referred to by index from the op and variant rows.
CLOBBER_SETS = tuple(tuple(registers) for registers in _TABLES["clobber_sets"])
# name, group, index, category, transfer, callee_save, returns_value, params, clobber set, clobber mask, location
OP_ROWS = tuple(tuple(row) for row in _TABLES["ops"])
# owner: {hypervisor: (kind, symbol, template hex, inline, preserves_registers, relocations, location, pad)}
IMPL_ROWS = _TABLES["impls"]
IDENTITY_PAD = tuple((offset, count) for offset, count in _TABLES["identity_pad"])
# op, variant, patch type, clobber set, location
VARIANT_ROWS = tuple(tuple(row) for row in _TABLES["variants"])


def _impl(row: tuple) -> Impl:  # type: ignore[type-arg]
    kind, symbol, template, inline, preserves, relocations, location, pad = row
    code = bytes.fromhex(template) if template is not None else None
    room = tuple((offset, count) for offset, count in pad)
    return Impl(kind, symbol, code, inline, preserves, tuple(tuple(r) for r in relocations), location, room)


def _ops() -> tuple[Op, ...]:
    impls = {owner: {hypervisor: _impl(row) for hypervisor, row in rows.items()} for owner, rows in IMPL_ROWS.items()}
    variants: dict[str, list[tuple[str, int, dict[str, Impl]]]] = {}
    for qualname, name, patch_type, _clobbers, _location in VARIANT_ROWS:
        variants.setdefault(qualname, []).append((name, patch_type, impls[f"{qualname}[{name}]"]))
    ops = []
    for name, group, index, category, transfer, callee_save, returns, params, clobbers, mask, location in OP_ROWS:
        qualname = f"{group}.{name}"
        ops.append(
            Op(name, group, index, category, transfer, callee_save, returns, tuple(params), CLOBBER_SETS[clobbers],
               mask, impls[qualname], tuple(variants.get(qualname, ())), location)
        )
    return tuple(ops)


OPS = _ops()
OPS_BY_INDEX = {op.index: op for op in OPS if op.index >= 0}
OPS_BY_NAME = {f"{op.group}.{op.name}": op for op in OPS}

# (name, C struct, forced-native mask bit)
GROUPS = tuple(tuple(row) for row in _TABLES["groups"])
# hypervisor -> "group.field" -> value of the pv_info-style data fields
DATA = _TABLES["data"]
HYPERVISORS = {
    row["name"]: Hypervisor(
        row["name"],
        row["execution"],
        row["paravirt_enabled"],
        tuple(tuple(d) for d in row["detections"]),
        tuple(row["native_fallback"]),
    )
    for row in _TABLES["hypervisors"]
}
MASK_CMDLINE = _TABLES["mask_cmdline"]
MASK_BITS = _TABLES["mask_bits"]
# What each op must do under each hypervisor: expressions over the harness's state names.
EFFECTS = _TABLES["effects"]
# (name, function, condition, hypervisors that yield)
YIELDS = tuple((n, f, w, tuple(h)) for n, f, w, h in _TABLES["yields"])
# IOMMU_INIT entries in run order: (detect, depends, early_init, late_init, finish, buses, found_under)
IOMMU = tuple((d, dep, e, late, fin, tuple(b), tuple(u)) for d, dep, e, late, fin, b, u in _TABLES["iommu"])


def select_hypervisor(
    cpuid_signature: str | None = None, boot_entry: str | None = None, hypervisor_type: int | None = None
) -> str:
    """The hypervisor the boot environment shows: a boot entry first, then the CPUID leaf, else default."""
    for method in ("boot_entry", "cpuid"):
        for hypervisor in HYPERVISORS.values():
            for kind, _leaf, signature, symbol, htype in hypervisor.detections:
                if kind != method:
                    continue
                if kind == "boot_entry" and boot_entry == symbol and htype in (None, hypervisor_type):
                    return hypervisor.name
                if kind == "cpuid" and cpuid_signature is not None and cpuid_signature.rstrip("\0") == signature:
                    return hypervisor.name
    for hypervisor in HYPERVISORS.values():
        if any(d[0] == "default" for d in hypervisor.detections):
            return hypervisor.name
    raise LookupError("no hypervisor is declared with a default detection")


def parse_mask(cmdline: str) -> frozenset[str]:
    """The groups forced native by `<mask>=irq,mmu` or `<mask>=0x18` on the kernel command line."""
    groups: set[str] = set()
    if MASK_CMDLINE is None:
        return frozenset()
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if key != MASK_CMDLINE or not sep:
            continue
        for item in filter(None, value.split(",")):
            if item in MASK_BITS:
                groups.add(item)
                continue
            try:
                number = int(item, 0)
            except ValueError:
                allowed = ", ".join(sorted(MASK_BITS))
                raise MaskError(f"{MASK_CMDLINE}: unknown group '{item}'; expected one of: {allowed}") from None
            by_bit = {bit: group for group, bit in MASK_BITS.items()}
            unknown = [bit for bit in range(number.bit_length()) if number >> bit & 1 and bit not in by_bit]
            if number < 0 or unknown:
                raise MaskError(f"{MASK_CMDLINE}: bit(s) {unknown or [number]} of {item} name no group")
            groups |= {group for bit, group in by_bit.items() if number >> bit & 1}
    return frozenset(groups)


def check_mask(hypervisor: str, masked: frozenset[str]) -> None:
    """Refuses a mask the environment cannot honour: PV-only execution has no native fallback."""
    environment = HYPERVISORS[hypervisor]
    if environment.execution != "pv":
        return
    for group in sorted(masked - set(environment.native_fallback)):
        raise MaskError(
            f"{MASK_CMDLINE}={group}: {hypervisor} runs the kernel paravirtualized and has no hardware "
            f"virtualization to run group '{group}' natively; groups it can force native: "
            + (", ".join(environment.native_fallback) or "none")
        )


def effective_impl(op: Op, hypervisor: str, masked: frozenset[str] = frozenset()) -> Impl:
    """The implementation a hypervisor uses for an op, with the forced-native mask applied."""
    return op.impls["native" if op.group in masked else hypervisor]


def out_of_line_symbol(op: Op, hypervisor: str, impl: Impl) -> str:
    """The function a site calls when it cannot hold the implementation inline."""
    if impl.kind == "call":
        if op.callee_save and not impl.preserves_registers:
            return f"__raw_callee_save_{impl.symbol}"
        return impl.symbol or ""
    # A hypervisor that keeps the native template shares the native body (pvops_tables.c
    # emits one body per written template, named after the hypervisor that wrote it).
    owner = "native" if impl.location == op.impls["native"].location else hypervisor
    return f"pvgen_{owner}_{op.group}_{op.name}"


def patch_decision(index: int, hypervisor: str, site_length: int, masked: frozenset[str] = frozenset()) -> Decision:
    """What to write at a site of op `index` under a hypervisor (paravirt_patch_default, made explicit)."""
    op = OPS_BY_INDEX[index]
    impl = effective_impl(op, hypervisor, masked)
    if impl.kind == "nop" and not op.returns_value:
        return Decision("nop", reason="the op does nothing here")
    if impl.kind == "identity" and IDENTITY_TEMPLATE is not None and len(IDENTITY_TEMPLATE) <= site_length:
        return Decision("inline", IDENTITY_TEMPLATE, reason="identity", pad=IDENTITY_PAD)
    if impl.kind == "asm" and impl.inline and impl.template is not None and len(impl.template) <= site_length:
        if not impl.relocations:
            return Decision("inline", impl.template, reason="template fits the site", pad=impl.pad)
    if site_length < DIRECT_CALL_SIZE:
        return Decision("indirect", reason=f"site of {site_length} bytes is too small for a direct call")
    if impl.kind == "identity":
        return Decision("call", symbol="pvgen_ident_64", reason="identity out of line")
    if impl.kind == "nop":
        return Decision("call", symbol="pvgen_nop", reason="nop that returns a value")
    kind = "jump" if op.transfer == "jump" else "call"
    return Decision(kind, symbol=out_of_line_symbol(op, hypervisor, impl), reason="direct " + kind)
