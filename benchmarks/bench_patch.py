"""Patching speed: sites rewritten per second by the x86-64 boot patcher (runtime/x86/boot.py).

Builds N synthetic `ff 15 rel32` sites through the generated layer's op slots in a flat
buffer, spread over every patchable op, and times `patch_sites` under each hypervisor:
once without fold records, once with each site between an `add` before it and two after
it recorded as its fold room (`.pvgen.fold`), so that padding goes into them.
Usage: python benchmarks/bench_patch.py [--sites N] [--runs R]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import struct
import time

from pvgen.generated import pvops_x86_64 as layer
from pvgen.runtime.x86.boot import TABLE_SYMBOL, SiteRecord, fill_table, implementation_symbol, patch_sites
from pvgen.runtime.x86.sitefold import FoldRoom, Neighbour

TEXT = 0xFFFF_FFFF_8100_0000
TABLE = 0xFFFF_FFFF_8200_0000
FUNCTIONS = 0xFFFF_FFFF_8300_0000
ADD = bytes.fromhex("4883c001")  # add $1, %rax: a neighbour that may take pad prefixes


class Flat:
    """The text segment as one bytearray at TEXT."""

    def __init__(self, text: bytearray) -> None:
        self.text = text

    def read(self, address: int, size: int) -> bytes:
        offset = address - TEXT
        return bytes(self.text[offset : offset + size])

    def write(self, address: int, data: bytes) -> None:
        offset = address - TEXT
        self.text[offset : offset + len(data)] = data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ops = [op for op in layer.OPS if op.category != "indirect" and op.index >= 0]
    symbols = {TABLE_SYMBOL: TABLE}
    for hypervisor in layer.HYPERVISORS:
        for number, op in enumerate(ops):
            name = implementation_symbol(layer, op, hypervisor, frozenset())
            symbols.setdefault(name, FUNCTIONS + 16 * len(symbols) + number)
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}; {args.sites:,} sites over {len(ops)} ops"
    )
    for fold in (False, True):
        for hypervisor in sorted(layer.HYPERVISORS):
            rates = []
            for _ in range(args.runs):
                text = bytearray()
                sites = []
                rooms = {}
                for number in range(args.sites):
                    op = ops[number % len(ops)]
                    text += ADD if fold else b""
                    address = TEXT + len(text)
                    opcode = b"\xff\x25" if op.transfer == "jump" else b"\xff\x15"
                    text += opcode + struct.pack("<i", TABLE + 8 * op.index - (address + 6))
                    text += ADD + ADD if fold else b""
                    text += b"\xc3"
                    sites.append(SiteRecord(address, op.index, 6, op.clobber_mask))
                    if fold:
                        after = (Neighbour(address + 6, 4, 0, False), Neighbour(address + 10, 4, 0, False))
                        rooms[address] = FoldRoom(address, Neighbour(address - 4, 4, 0, False), after)
                slots: dict[int, int] = {}
                table = fill_table(layer, hypervisor, frozenset(), symbols, slots.__setitem__)

                image = Flat(text)
                start = time.perf_counter()
                report = patch_sites(
                    layer, hypervisor, frozenset(), sites, symbols, image.read, image.write, table, rooms
                )
                rates.append(len(sites) / (time.perf_counter() - start))
            kinds = ", ".join(f"{k} {v:,}" for k, v in report.by_kind.items())
            rate = statistics.median(rates)
            label = f"{hypervisor}{' +fold' if fold else ''}"
            print(
                f"{label:<12} {rate:>12,.0f} sites/s (median of {args.runs}; target 100,000)  {kinds}; "
                f"folded {len(report.folded):,}"
            )


if __name__ == "__main__":
    main()
