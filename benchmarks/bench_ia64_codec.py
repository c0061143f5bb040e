"""IA-64 codec speed: bundles per second for decode (bytes -> instructions) and encode (back to bytes).

Two inputs:
- spec code: every IA64 asm text of spec/ assembled by pvgen.ia64 (the code the codec exists for),
  repeated to --bundles bundles; steady state, so the per-slot caches are warm, as they are for any
  real code, where a few nops and moves make up most slots;
- all distinct: random valid slot values for every form of the table in the units they fit, every
  bundle different, with the decode and encode caches emptied before each run (the worst case).
Each figure is the median of --runs runs in this process, with the cyclic garbage collector off during
the timed call, as `pvgen` runs (cli.py); `--gc` leaves it on.
Usage: python benchmarks/bench_ia64_codec.py [--runs N] [--bundles N]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pvgen.ia64 import decoder, encoder  # noqa: E402
from pvgen.ia64.bundle import SLOT_MASK, TEMPLATES, pack_int  # noqa: E402
from pvgen.ia64.insn import FORMS, Form  # noqa: E402

TARGET = 200_000


def spec_code() -> bytes:
    from pvgen.cli import load_and_check

    spec, _, _ = load_and_check([str(ROOT / "spec")])
    assert spec is not None
    texts = []
    for op in spec.ops("ia64"):
        for impl in [*op.impls, *(i for v in op.variants for i in v.impls)]:
            if impl.kind == "asm" and impl.text:
                texts.append(impl.text)
    for macro in spec.macros:
        if macro.arch == "ia64":
            registers = {"gr": iter(f"r{n}" for n in range(16, 32)), "pr": iter(f"p{n}" for n in range(6, 16))}
            values = {p.name: next(registers[p.kind]) if p.kind in registers else "6" for p in macro.params}
            for expansion in macro.expansions:
                if "DO_SAVE_MIN" not in expansion.text:
                    texts.append(re.sub(r"\\(\w+)", lambda m, v=values: v.get(m.group(1), m.group(0)), expansion.text))
    return b"".join(encoder.assemble(text).code for text in texts)


def distinct_code(count: int, seed: int = 1) -> bytes:
    """`count` bundles of random valid instructions (random bits in every operand field of a form)."""
    rng = random.Random(seed)
    by_unit: dict[str, list[Form]] = {u: [] for u in "MIBFX"}
    for form in FORMS:
        for unit in {"A": "MI", "X": "X"}.get(form.type, form.type):
            by_unit[unit].append(form)
    templates = [t for t in TEMPLATES if t.units is not None]

    def slot_for(unit: str) -> tuple[int, int]:
        while True:
            form = rng.choice(by_unit[unit])
            word = form.value | (rng.getrandbits(41) & ~form.mask & SLOT_MASK)
            if form.check is None or form.check(word):
                return word, rng.getrandbits(41) if form.long else 0

    words = []
    for _ in range(count):
        template = rng.choice(templates)
        assert template.units is not None
        if template.units[1] == "L":
            x, lslot = slot_for("X")
            words.append(pack_int(template.value, slot_for("M")[0], lslot & ~3 if x >> 37 >= 0xC else lslot, x))
        else:
            words.append(pack_int(template.value, *(slot_for(u)[0] for u in template.units)))
    return b"".join(w.to_bytes(16, "little") for w in words)


def clear_caches() -> None:
    for cache in decoder._caches.values():
        cache.clear()
    for cache in encoder._encode_caches.values():
        cache.clear()


def rate(action: Callable[[], object], bundles: int, runs: int, cold: bool, collect: bool) -> tuple[float, float]:
    """(median, best) bundles per second over runs."""
    rates = []
    for _ in range(runs):
        if cold:
            clear_caches()
        gc.collect()
        if not collect:
            gc.disable()
        start = time.perf_counter()
        action()
        rates.append(bundles / (time.perf_counter() - start))
        gc.enable()
    return statistics.median(rates), max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--bundles", type=int, default=50_000)
    parser.add_argument("--gc", action="store_true", help="keep the cyclic garbage collector on")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, {platform.system()}; Python {platform.python_version()}"
    )
    base = spec_code()
    spec = base * (args.bundles // (len(base) // 16) + 1)
    spec = spec[: 16 * args.bundles]
    distinct = distinct_code(args.bundles)
    print(f"spec code: {len(base) // 16} distinct bundles repeated to {len(spec) // 16}; all distinct: {args.bundles}")
    print(f"garbage collector: {'on' if args.gc else 'off during the timed calls (as in pvgen)'}")
    print(f"{'input':<16}{'operation':<10}{'median/s':>12}{'best/s':>12}{'target':>10}")
    for name, data, cold in (("spec code", spec, False), ("all distinct", distinct, True)):
        bundles = len(data) // 16
        decoded = [(b.template, b.instructions) for b in decoder.decode(data)]
        assert encoder.encode(decoded) == data, "round trip failed"
        median, best = rate(lambda data=data: decoder.decode(data), bundles, args.runs, cold, args.gc)
        print(f"{name:<16}{'decode':<10}{median:>12,.0f}{best:>12,.0f}{TARGET:>10,}")
        median, best = rate(lambda decoded=decoded: encoder.encode(decoded), bundles, args.runs, cold, args.gc)
        print(f"{name:<16}{'encode':<10}{median:>12,.0f}{best:>12,.0f}{TARGET:>10,}")


if __name__ == "__main__":
    main()
