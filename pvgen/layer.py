"""What every generated Python layer (generated/python/pvops_<arch>.py) shares at run time.

A generated layer is one arch's constants and the rows of its tables (the JSON beside
it); this module turns the rows into records (`Op`, `Impl`, `Hypervisor`) and holds the
logic the runtime asks of a layer: which hypervisor a boot environment shows, the
forced-native mask, the implementation in effect, the function a site calls, and what to
write at a site (Linux's paravirt_patch_default, made explicit). Keeping it here rather
than in the template means one copy for every arch, and the generated module stays a
readable list of what the spec declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def _impl(row: list[Any]) -> Impl:
    kind, symbol, template, inline, preserves, relocations, location, pad = row
    code = bytes.fromhex(template) if template is not None else None
    room = tuple((offset, count) for offset, count in pad)
    return Impl(kind, symbol, code, inline, preserves, tuple(tuple(r) for r in relocations), location, room)


class Layer:
    """One arch's layer: its tables as records, and the decisions the runtime asks for."""

    def __init__(self, tables: dict[str, Any], direct_call_size: int) -> None:
        self.direct_call_size = direct_call_size
        self.identity_template = bytes.fromhex(tables["identity"]) if tables["identity"] else None
        # Unique clobber sets, referred to by index from the op and variant rows.
        self.clobber_sets = tuple(tuple(registers) for registers in tables["clobber_sets"])
        # name, group, index, category, transfer, callee_save, returns_value, params, clobber set,
        # clobber mask, location
        self.op_rows = tuple(tuple(row) for row in tables["ops"])
        # owner: {hypervisor: (kind, symbol, template hex, inline, preserves_registers, relocations, location, pad)}
        self.impl_rows = tables["impls"]
        self.identity_pad = tuple((offset, count) for offset, count in tables["identity_pad"])
        # op, variant, patch type, clobber set, location
        self.variant_rows = tuple(tuple(row) for row in tables["variants"])
        self.ops = self._ops()
        self.ops_by_index = {op.index: op for op in self.ops if op.index >= 0}
        self.ops_by_name = {f"{op.group}.{op.name}": op for op in self.ops}
        # (name, C struct, forced-native mask bit)
        self.groups = tuple(tuple(row) for row in tables["groups"])
        # hypervisor -> "group.field" -> value of the pv_info-style data fields
        self.data = tables["data"]
        self.hypervisors = {
            row["name"]: Hypervisor(
                row["name"],
                row["execution"],
                row["paravirt_enabled"],
                tuple(tuple(d) for d in row["detections"]),
                tuple(row["native_fallback"]),
            )
            for row in tables["hypervisors"]
        }
        self.mask_cmdline = tables["mask_cmdline"]
        self.mask_bits = tables["mask_bits"]
        # What each op must do under each hypervisor: expressions over the harness's state names.
        self.effects = tables["effects"]
        # (name, function, condition, hypervisors that yield)
        self.yields = tuple((n, f, w, tuple(h)) for n, f, w, h in tables["yields"])
        # IOMMU_INIT entries in run order: (detect, depends, early_init, late_init, finish, buses, found_under)
        self.iommu = tuple((d, dep, e, late, fin, tuple(b), tuple(u)) for d, dep, e, late, fin, b, u in tables["iommu"])

    def _ops(self) -> tuple[Op, ...]:
        impls = {
            owner: {hypervisor: _impl(row) for hypervisor, row in rows.items()}
            for owner, rows in self.impl_rows.items()
        }
        variants: dict[str, list[tuple[str, int, dict[str, Impl]]]] = {}
        for qualname, name, patch_type, _clobbers, _location in self.variant_rows:
            variants.setdefault(qualname, []).append((name, patch_type, impls[f"{qualname}[{name}]"]))
        ops = []
        for row in self.op_rows:
            name, group, index, category, transfer, callee_save, returns, params, clobbers, mask, location = row
            qualname = f"{group}.{name}"
            head = (name, group, index, category, transfer, callee_save, returns, tuple(params))
            tail = (impls[qualname], tuple(variants.get(qualname, ())), location)
            ops.append(Op(*head, self.clobber_sets[clobbers], mask, *tail))
        return tuple(ops)

    def select_hypervisor(
        self, cpuid_signature: str | None = None, boot_entry: str | None = None, hypervisor_type: int | None = None
    ) -> str:
        """The hypervisor the boot environment shows: a boot entry first, then the CPUID leaf, else default."""
        for method in ("boot_entry", "cpuid"):
            for hypervisor in self.hypervisors.values():
                for kind, _leaf, signature, symbol, htype in hypervisor.detections:
                    if kind != method:
                        continue
                    if kind == "boot_entry" and boot_entry == symbol and htype in (None, hypervisor_type):
                        return hypervisor.name
                    if kind == "cpuid" and cpuid_signature is not None and cpuid_signature.rstrip("\0") == signature:
                        return hypervisor.name
        for hypervisor in self.hypervisors.values():
            if any(d[0] == "default" for d in hypervisor.detections):
                return hypervisor.name
        raise LookupError("no hypervisor is declared with a default detection")

    def parse_mask(self, cmdline: str) -> frozenset[str]:
        """The groups forced native by `<mask>=irq,mmu` or `<mask>=0x18` on the kernel command line."""
        groups: set[str] = set()
        if self.mask_cmdline is None:
            return frozenset()
        for word in cmdline.split():
            key, sep, value = word.partition("=")
            if key != self.mask_cmdline or not sep:
                continue
            for item in filter(None, value.split(",")):
                if item in self.mask_bits:
                    groups.add(item)
                    continue
                try:
                    number = int(item, 0)
                except ValueError:
                    allowed = ", ".join(sorted(self.mask_bits))
                    raise MaskError(
                        f"{self.mask_cmdline}: unknown group '{item}'; expected one of: {allowed}"
                    ) from None
                by_bit = {bit: group for group, bit in self.mask_bits.items()}
                unknown = [bit for bit in range(number.bit_length()) if number >> bit & 1 and bit not in by_bit]
                if number < 0 or unknown:
                    raise MaskError(f"{self.mask_cmdline}: bit(s) {unknown or [number]} of {item} name no group")
                groups |= {group for bit, group in by_bit.items() if number >> bit & 1}
        return frozenset(groups)

    def check_mask(self, hypervisor: str, masked: frozenset[str]) -> None:
        """Refuses a mask the environment cannot honour: PV-only execution has no native fallback."""
        environment = self.hypervisors[hypervisor]
        if environment.execution != "pv":
            return
        for group in sorted(masked - set(environment.native_fallback)):
            raise MaskError(
                f"{self.mask_cmdline}={group}: {hypervisor} runs the kernel paravirtualized and has no hardware "
                f"virtualization to run group '{group}' natively; groups it can force native: "
                + (", ".join(environment.native_fallback) or "none")
            )

    @staticmethod
    def effective_impl(op: Op, hypervisor: str, masked: frozenset[str] = frozenset()) -> Impl:
        """The implementation a hypervisor uses for an op, with the forced-native mask applied."""
        return op.impls["native" if op.group in masked else hypervisor]

    @staticmethod
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

    def patch_decision(
        self, index: int, hypervisor: str, site_length: int, masked: frozenset[str] = frozenset()
    ) -> Decision:
        """What to write at a site of op `index` under a hypervisor (paravirt_patch_default, made explicit)."""
        op = self.ops_by_index[index]
        impl = self.effective_impl(op, hypervisor, masked)
        identity = self.identity_template
        if impl.kind == "nop" and not op.returns_value:
            return Decision("nop", reason="the op does nothing here")
        if impl.kind == "identity" and identity is not None and len(identity) <= site_length:
            return Decision("inline", identity, reason="identity", pad=self.identity_pad)
        if impl.kind == "asm" and impl.inline and impl.template is not None and len(impl.template) <= site_length:
            if not impl.relocations:
                return Decision("inline", impl.template, reason="template fits the site", pad=impl.pad)
        if site_length < self.direct_call_size:
            return Decision("indirect", reason=f"site of {site_length} bytes is too small for a direct call")
        if impl.kind == "identity":
            return Decision("call", symbol="pvgen_ident_64", reason="identity out of line")
        if impl.kind == "nop":
            return Decision("call", symbol="pvgen_nop", reason="nop that returns a value")
        kind = "jump" if op.transfer == "jump" else "call"
        return Decision(kind, symbol=self.out_of_line_symbol(op, hypervisor, impl), reason="direct " + kind)
