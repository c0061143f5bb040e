"""Build speed: `pvgen build` with nothing changed, and a full rebuild that reuses the template bytes.

Each figure is the median wall time of several runs of the installed console script in a
fresh process (interpreter start included). The full rebuild deletes every output but the
template cache, so the assembler does not run but every backend renders and black formats
every Python output.
Usage: python benchmarks/bench_build.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_check import console_script  # noqa: E402


def timed(command: list[str], cwd: Path, before: object = None) -> float:
    if callable(before):
        before()
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    pvgen = console_script()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        shutil.copytree(ROOT / "spec", work / "spec")
        shutil.copytree(ROOT / "generated", work / "generated")
        cache = (work / "generated" / "templates" / "cache.json").read_bytes()

        def wipe() -> None:
            shutil.rmtree(work / "generated")
            (work / "generated" / "templates").mkdir(parents=True)
            (work / "generated" / "templates" / "cache.json").write_bytes(cache)

        unchanged = [timed([*pvgen, "build"], work) for _ in range(args.runs)]
        rebuild = [timed([*pvgen, "build"], work, wipe) for _ in range(args.runs)]
        check = [timed([*pvgen, "build", "--check"], work) for _ in range(args.runs)]
    print(f"{'case':<44}{'median s':>10}{'min s':>10}{'target':>10}")
    rows = [
        ("pvgen build, nothing changed", unchanged, "< 0.3"),
        ("pvgen build, full rebuild, bytes reused", rebuild, "< 1.5"),
        ("pvgen build --check", check, ""),
    ]
    for label, times, target in rows:
        print(f"{label:<44}{statistics.median(times):>10.3f}{min(times):>10.3f}{target:>10}")


if __name__ == "__main__":
    main()
