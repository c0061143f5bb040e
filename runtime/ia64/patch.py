"""Boot-time patching of IA-64 pv_ops sites (reference §4): bundles, branches and brl relocation.

- Bundle sites (`.paravirt_bundles`: start, end, type; the 5-bundle pv_cpu_ops stub): the decision
  comes from the generated layer (`pvops_ia64.patch_decision`, or the same rule for the per-register
  getreg/setreg variants, which the generated function does not index). An inline decision copies
  the template over the site and fills the rest with the nop bundle (§4.3). A template whose only
  obstacle is a brl relocation (Xen's intrin_local_irq_restore, tag `[99:]`) is copied as well and
  its brl re-aimed at the target (§4.5). Anything else leaves the stub, which still calls through
  pv_cpu_ops.
- Branch sites (`.paravirt_branches`: tag, type): the slot-0 IP-relative branch is re-aimed at
  the instance's function (§4.4) — with a range check: the 21-bit bundle displacement reaches
  ±16 MiB, and a target beyond it is refused (the historical code silently truncated it).
- Patched bytes go through `PhysicalMemory.write`, which drops translated code of those pages
  (the model's fc.i + sync.i + srlz.i).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs
from pvgen.generated import pvops_ia64
from pvgen.runtime.ia64.memory import PhysicalMemory

from pvgen.ia64.bundle import SLOT_MASK, TEMPLATES, pack_int, unpack_int

BR_START: Final = 0x30000000
BRANCH_NAMES: Final = ("switch_to", "leave_syscall", "work_processed_syscall", "leave_kernel")
NOP_BUNDLE: Final = pvops_ia64.NOPS[0]
#: br displacement: 21-bit signed count of bundles.
BRANCH_REACH: Final = 1 << 24


class PatchError(ValueError):
    """A site that cannot be patched as asked (misaligned, not a branch, out of reach)."""


class PatchRangeError(PatchError):
    """The branch target is beyond the ±16 MiB reach of an IP-relative branch."""


@attrs.frozen
class PatchRecord:
    """What the patcher did at one site: kind is bundle, bundle+brl, branch or unpatched."""

    kind: str
    site: int
    type: int
    op: str
    detail: str = ""


def _word(mem: PhysicalMemory, address: int) -> int:
    return mem.read_uint(address, 16)


def _put_word(mem: PhysicalMemory, address: int, word: int) -> None:
    mem.write(address, word.to_bytes(16, "little"))


def relocate_br(mem: PhysicalMemory, tag: int, target: int) -> None:
    """paravirt_patch_reloc_br with the missing range check: re-aims the B1 branch at `tag`."""
    bundle, slot = tag & -16, tag & 3
    if slot != 0:
        raise PatchError(f"branch site {tag:#x}: only slot 0 is patched (§4.4), got slot {slot}")
    if target & 15:
        raise PatchError(f"branch target {target:#x} is not bundle-aligned")
    displacement = target - bundle
    if not -BRANCH_REACH <= displacement < BRANCH_REACH:
        raise PatchRangeError(
            f"branch site {tag:#x}: target {target:#x} is {displacement:+#x} away, beyond the ±16 MiB "
            "reach of an IP-relative branch"
        )
    template, slot0, slot1, slot2 = unpack_int(_word(mem, bundle))
    units = TEMPLATES[template].units
    if units is None or units[0] != "B" or slot0 >> 37 not in (4, 5):
        raise PatchError(f"branch site {tag:#x}: slot 0 is not an IP-relative branch")
    imm = (displacement >> 4) & ((1 << 21) - 1)
    slot0 = (slot0 & ~((1 << 36) | (0xFFFFF << 13))) | ((imm >> 20) << 36) | ((imm & 0xFFFFF) << 13)
    _put_word(mem, bundle, pack_int(template, slot0, slot1, slot2))


def relocate_brl(mem: PhysicalMemory, tag: int, target: int) -> None:
    """paravirt_patch_reloc_brl: re-aims the brl whose L slot is `tag` (slot 1 of an MLX bundle)."""
    bundle, slot = tag & -16, tag & 3
    template, slot0, lslot, xslot = unpack_int(_word(mem, bundle))
    if slot != 1 or TEMPLATES[template].units != ("M", "L", "X") or xslot >> 37 not in (0xC, 0xD):
        raise PatchError(f"brl tag {tag:#x} is not the L slot of an MLX brl")
    imm60 = ((target - bundle) >> 4) & ((1 << 60) - 1)
    xslot = (xslot & ~((1 << 36) | (0xFFFFF << 13))) | ((imm60 >> 59) << 36) | ((imm60 & 0xFFFFF) << 13)
    lslot = (lslot & 3) | (((imm60 >> 20) & ((1 << 39) - 1)) << 2)
    _put_word(mem, bundle, pack_int(template, slot0, lslot & SLOT_MASK, xslot))


def decide(
    site_type: int, hypervisor: str, site_length: int, masked: frozenset[str]
) -> tuple[str, pvops_ia64.Decision, pvops_ia64.Impl]:
    """(op name, decision, implementation) for a bundle site type, from the generated layer."""
    op = pvops_ia64.OPS_BY_INDEX.get(site_type)
    if op is not None:
        impl = pvops_ia64.effective_impl(op, hypervisor, masked)
        return op.name, pvops_ia64.patch_decision(site_type, hypervisor, site_length, masked), impl
    for op in pvops_ia64.OPS:
        for variant, patch_type, impls in op.variants:
            if patch_type != site_type:
                continue
            impl = impls["native" if op.group in masked else hypervisor]
            name = f"{op.name}[{variant}]"
            if impl.kind == "asm" and impl.inline and impl.template is not None and len(impl.template) <= site_length:
                if not impl.relocations:
                    return name, pvops_ia64.Decision("inline", impl.template, reason="template fits the site"), impl
            symbol = f"pvgen_{hypervisor}_{op.group}_{op.name}_{variant}"
            return name, pvops_ia64.Decision("call", symbol=symbol, reason="template does not fit"), impl
    raise PatchError(f"no pv_cpu_ops op or register variant has patch type {site_type:#x}")


def patch_bundles(
    mem: PhysicalMemory,
    sites: list[tuple[int, int, int]],
    hypervisor: str,
    symbols: Mapping[str, int],
    masked: frozenset[str] = frozenset(),
) -> list[PatchRecord]:
    """paravirt_patch_apply_bundle over the `.paravirt_bundles` records."""
    records = []
    for start, end, site_type in sites:
        if start & 15 or end & 15 or end <= start:
            records.append(PatchRecord("unpatched", start, site_type, "?", "site is not whole bundles"))
            continue
        name, decision, impl = decide(site_type, hypervisor, end - start, masked)
        code = decision.code
        kind = "bundle"
        relocations = [r for r in impl.relocations if r[1] == "brl"]
        if decision.kind != "inline":
            template = impl.template
            fits = impl.kind == "asm" and template is not None and len(template) <= end - start
            if not (fits and relocations and len(relocations) == len(impl.relocations)):
                records.append(PatchRecord("unpatched", start, site_type, name, f"{decision.kind}: {decision.reason}"))
                continue
            assert template is not None
            code, kind = template, "bundle+brl"
        filled = code + NOP_BUNDLE * ((end - start - len(code)) // 16)
        mem.write(start, filled)
        if kind == "bundle+brl":
            for offset, _kind, symbol in relocations:
                if symbol not in symbols:
                    raise PatchError(f"site {start:#x}: brl target {symbol} is not placed")
                relocate_brl(mem, start + offset, symbols[symbol])
        records.append(PatchRecord(kind, start, site_type, name, f"{len(code)} of {end - start} bytes"))
    return records


def patch_branches(
    mem: PhysicalMemory, sites: list[tuple[int, int]], hypervisor: str, symbols: Mapping[str, int]
) -> list[PatchRecord]:
    """paravirt_patch_apply_branch over the `.paravirt_branches` records."""
    prefix = "ia64_native" if hypervisor == "native" else hypervisor
    records = []
    for tag, site_type in sites:
        index = site_type - BR_START
        if not 0 <= index < len(BRANCH_NAMES):
            records.append(PatchRecord("unpatched", tag, site_type, "?", "unknown branch type"))
            continue
        name = BRANCH_NAMES[index]
        target = symbols.get(f"{prefix}_{name}")
        if target is None:
            records.append(PatchRecord("unpatched", tag, site_type, name, f"no {prefix}_{name}"))
            continue
        try:
            relocate_br(mem, tag, target)
        except PatchError as error:
            records.append(PatchRecord("unpatched", tag, site_type, name, str(error)))
            continue
        records.append(PatchRecord("branch", tag, site_type, name, f"-> {prefix}_{name} {target:#x}"))
    return records
