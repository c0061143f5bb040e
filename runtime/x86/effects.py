"""Runs one x86-64 op's implementation inside a booted image, for the generated suites' effect checks.

The harness cannot run a `call` implementation on a bare CPU: it is a function of the guest
library. So a tiny image (an empty workload + the guest library + the generated pvops_tables.c
of the directory under test) is built once per session, booted under the hypervisor's
environment (run.boot_machine), and the op's table-slot target (boot.implementation_symbol) is
called with the harness's arguments. `names()` then gives the effect expression's names as the
kernel sees them under that environment (pvgen/effects.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

IF = 0x200
DATA = 0xFFFF_FFFF_8300_0000  # pointer arguments: a kernel-map page, so Xen can translate it (pfn 0x3000)
DATA_SIZE = 0x2000
ENTRY_SOURCE = "/* The harness's image: only the guest library and the tables matter. */\n" + (
    "unsigned long workload_entry(void) { return 0; }\n"
)


@contextlib.contextmanager
def _generated(generated: Path, layer: ModuleType) -> Iterator[None]:
    """image.py and run.py use the repository's generated directory; point them at the one under test."""
    from pvgen.runtime.x86 import image, run

    saved = image.GENERATED, run.layer
    image.GENERATED, run.layer = generated, layer
    try:
        yield
    finally:
        image.GENERATED, run.layer = saved


@cache
def harness_image(generated: Path) -> Path:
    """The image, built once per session (and cached on disk by content)."""
    from pvgen.runtime.x86 import image

    cache_dir = image.default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = cache_dir / "pvgen_harness_entry.c"
    if not source.exists() or source.read_text() != ENTRY_SOURCE:
        source.write_text(ENTRY_SOURCE)
    saved = image.GENERATED
    image.GENERATED = generated
    try:
        return image.build_image_from_sources("harness", [source], "paravirt")
    finally:
        image.GENERATED = saved


class Outcome:
    """What one call did, and the effect names read from the environment afterwards."""

    def __init__(self, machine: Any, arguments: list[int], result: Any, stats: Any, invlpgs: list[int]) -> None:
        self.machine = machine
        self.arguments = arguments
        self.result = result
        self.stats = stats
        self.invlpgs = invlpgs

    def names(self) -> dict[str, Any]:
        from pvgen.runtime.x86.hv.xen import XenPv

        cpu, env = self.machine.cpu, self.machine.env
        xen = isinstance(env, XenPv)
        mem = cpu.memory

        def cr(number: int) -> int:
            if xen:
                value = env.read_cr(cpu, number)
                return 0 if value is None else value
            return (cpu.cr0, 0, cpu.cr2, cpu.cr3, cpu.cr4)[number]

        names: dict[str, Any] = {
            "IF": env.mask(cpu) == 0 if xen else bool(cpu.rflags & IF),
            "mask": env.mask(cpu) if xen else 0,
            "pending": env.pending(cpu) if xen else 0,
            "ret": self.result.rax,
            "cr0": cr(0),
            "cr2": cr(2),
            "cr3": cr(3),
            "cr4": cr(4),
            "hypercalls": tuple(sorted(self.stats.hypercalls)),
            "exits": sum(self.stats.vm_exits.values()) + sum(self.stats.traps.values()),
            "upcalls": self.stats.events_delivered,
            "mem8": lambda a: mem.read(a, 1)[0],
            "mem16": lambda a: int.from_bytes(mem.read(a, 2), "little"),
            "mem32": lambda a: int.from_bytes(mem.read(a, 4), "little"),
            "mem64": lambda a: int.from_bytes(mem.read(a, 8), "little"),
            "flushed": lambda a: any(x >> 12 == a >> 12 for x in self.invlpgs),
        }
        names.update({f"arg{i}": value for i, value in enumerate(self.arguments)})
        return names


def call_op(
    generated: Path, layer: ModuleType, op: Any, hypervisor: str, arguments: list[int], data: bytes, *, irqs_on: bool
) -> Outcome:
    """Boots the harness image under `hypervisor`, then calls the op's implementation with `arguments`."""
    from pvgen.runtime.x86 import boot
    from pvgen.runtime.x86.hv.xen import XenPv
    from pvgen.runtime.x86.run import boot_machine

    path = harness_image(generated)
    with _generated(generated, layer):
        machine, _state = boot_machine(path, hypervisor)
    cpu, env = machine.cpu, machine.env
    cpu.memory.map(DATA, DATA_SIZE, "rw", name="harness data")
    cpu.memory.write(DATA, data)
    if isinstance(env, XenPv):
        env.set_mask(cpu, 0 if irqs_on else 1)
    else:
        cpu.rflags = (cpu.rflags | IF) if irqs_on else (cpu.rflags & ~IF)
    symbol = boot.implementation_symbol(layer, op, hypervisor, frozenset())
    address = machine.symbol(symbol)
    before = env.stats.copy()
    cpu.invlpg_log.clear()
    xen_invlpgs = getattr(env, "invlpgs", None)
    if xen_invlpgs is not None:
        xen_invlpgs.clear()
    result = machine.call(address, tuple(arguments), budget=200_000)
    assert result.reason == "return", f"{symbol} under {hypervisor} ended by {result.reason} at {result.rip:#x}"
    invlpgs = list(cpu.invlpg_log) + list(xen_invlpgs or ())
    return Outcome(machine, arguments, result, env.stats.since(before), invlpgs)
