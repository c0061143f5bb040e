"""The IA-64 cost model: every cycle figure the runtime uses, each with its justification.

The model is a first-order one: cycles = sum over retired instructions of their class's figure,
plus a figure per event (interruption delivery, rfi, each hyperprivop, each hypercall, each
privileged-operation fault that Xen emulates, each fault Xen reflects to the guest). It does not
model issue width, stalls or caches; it exists to compare paths (native vs. paravirtualised vs.
trap-and-emulate), where the differences are an order of magnitude, not a few percent.

The instruction figures follow the Itanium 2 pipeline in broad strokes (1-cycle ALU and L1D
integer loads, 6 instructions per cycle of issue width ignored, a pipeline flush of roughly a
dozen cycles on an interruption or rfi). The hypervisor figures are path-length estimates of
Xen/IA64's handlers (instructions on the path, at about one cycle each, plus the flushes); they are
the model's assumptions, not measurements, and live only here.
"""

from __future__ import annotations

from typing import Final

import attrs


@attrs.frozen
class Cost:
    cycles: int
    why: str


#: Per instruction class (see translate.CLASSES).
CLASS_CYCLES: Final[dict[str, Cost]] = {
    "nop": Cost(0, "nops fill bundle slots; they issue with the bundle's other instructions"),
    "alu": Cost(1, "integer ALU, shift, deposit, movl and register moves: single-cycle on Itanium 2"),
    "compare": Cost(1, "compares and tbit write predicates in one cycle"),
    "load": Cost(1, "integer loads hitting L1D have 1-cycle latency on Itanium 2"),
    "store": Cost(1, "stores retire into the store buffer"),
    "atomic": Cost(10, "cmpxchg is performed at L2 (no L1D for semaphores): about L2 latency"),
    "branch": Cost(1, "a correctly predicted taken branch costs about one bubble"),
    "ar": Cost(2, "moves to and from application registers go through the M-unit with 2-cycle latency"),
    "system": Cost(8, "moves to/from CR, PSR, RR and TLB operations are serialising-class: a partial drain"),
    "serialize": Cost(12, "srlz.i/sync.i/mf drain the pipeline (about the front-end depth)"),
    "rfi": Cost(13, "rfi restores PSR and redirects fetch: a full pipeline flush"),
    "break": Cost(0, "the break itself is charged as the interruption it raises (see EVENT_CYCLES)"),
}

#: Per event.
EVENT_CYCLES: Final[dict[str, Cost]] = {
    "interruption": Cost(20, "interruption delivery: flush, collect IIP/IPSR/ISR, vector through IVA"),
    "xen_hyperprivop_fast": Cost(
        120,
        "break -> Xen's fast hyperprivop path (hand-written asm in hyperprivop.S): delivery (20) + "
        "~80 instructions of dispatch, virtual-state update and return + rfi (13)",
    ),
    "xen_hyperprivop_slow": Cost(
        450,
        "hyperprivops without an asm fast path enter C (vcpu_*): state save/restore of a pt_regs "
        "frame (~200 instructions) plus the C body",
    ),
    "xen_hypercall": Cost(
        900,
        "break 0x1000 -> ia64_hypercall: full pt_regs save, dispatch table, C handler, guest-handle "
        "copies (xencomm) and return; about twice the slow hyperprivop path",
    ),
    "xen_privop_emulation": Cost(
        1500,
        "privileged-operation fault -> priv_emulate: the trap into Xen, a full state save, fetching "
        "and decoding the faulting bundle in C, emulating it against the virtual state, advancing IIP "
        "and returning; the C decode and the save/restore dominate",
    ),
    "xen_reflect": Cost(
        300,
        "reflecting a fault into the guest: the machine trap into Xen (20), then write the virtual "
        "IPSR/IIP/IFA/ISR/IFS, switch the virtual bank, mask events, jump to the guest IVA "
        "(reflect_interruption, ~250 instructions)",
    ),
    "xen_tlb_fill": Cost(
        250,
        "machine TLB miss satisfied from the guest's virtual TLB: the trap into Xen, a lookup, "
        "privilege compression of the PTE, a machine itc and rfi",
    ),
}

#: Hyperprivops Xen/IA64 serves from its assembly fast path (the rest go through C).
FAST_HYPERPRIVOPS: Final = frozenset(
    {
        "RFI",
        "RSM_DT",
        "SSM_DT",
        "COVER",
        "ITC_D",
        "ITC_I",
        "SSM_I",
        "GET_IVR",
        "GET_TPR",
        "SET_TPR",
        "EOI",
        "SET_ITM",
        "THASH",
        "PTC_GA",
        "GET_RR",
        "SET_RR",
        "SET_KR",
        "GET_PSR",
        "RSM_BE",
    }
)


def class_cycles() -> dict[str, int]:
    return {name: cost.cycles for name, cost in CLASS_CYCLES.items()}


def event_cycles(name: str) -> int:
    return EVENT_CYCLES[name].cycles


def hyperprivop_cycles(name: str) -> int:
    return event_cycles("xen_hyperprivop_fast" if name in FAST_HYPERPRIVOPS else "xen_hyperprivop_slow")
