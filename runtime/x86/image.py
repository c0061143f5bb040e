"""Kernel-style x86-64 test images: a workload, the guest support library and the pv_ops tables.

`build_image("sched", "paravirt")` compiles runtime/x86/workloads/sched.c (and sched.S if
there is one) with the guest library in runtime/x86/guest/ and, in paravirt mode, the
generated tables (generated/c/x86_64/pvops_tables.c), then links them with GNU ld at the
kernel's text address. Native mode (-DPVGEN_NATIVE) inlines the native implementations
and has no tables and no patch sites. Images are cached by a hash of every input (sources,
headers, flags, tool versions), so a second build of unchanged sources is a file lookup.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GUEST = HERE / "guest"
WORKLOADS = HERE / "workloads"
GENERATED = ROOT / "generated"
TEXT_ADDRESS = 0xFFFF_FFFF_8100_0000
MODES = ("paravirt", "native")
CFLAGS = (
    "-O2",
    "-mcmodel=kernel",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-mgeneral-regs-only",
    "-fno-common",
    "-DPVGEN_IMPL=__attribute__((weak))",
)
# --emit-relocs keeps the relocations in the image: the fold pass (sitefold.py) needs every
# reference into code, as objtool does.
LDFLAGS = (
    "-nostdlib",
    "-static",
    "-z",
    "max-page-size=4096",
    "-z",
    "noexecstack",
    "--build-id=none",
    "--emit-relocs",
)


class ImageError(Exception):
    """An image could not be built: a missing tool or source, or a compiler or linker error."""


def guest_sources() -> list[Path]:
    """The guest support library: every .c and .S file in runtime/x86/guest."""
    return sorted(p for p in GUEST.iterdir() if p.suffix in (".c", ".S"))


def workload_sources(name: str) -> list[Path]:
    """The sources of a workload in runtime/x86/workloads: NAME.c and NAME.S, whichever exist."""
    sources = [p for p in (WORKLOADS / f"{name}.c", WORKLOADS / f"{name}.S") if p.exists()]
    if not sources:
        known = sorted({p.stem for p in WORKLOADS.glob("*.[cS]")})
        raise ImageError(f"unknown workload '{name}'; expected one of: {', '.join(known)}")
    return sources


def workloads() -> list[str]:
    """The names of the workloads in runtime/x86/workloads."""
    return sorted({p.stem for p in WORKLOADS.glob("*.c")})


def default_cache_dir() -> Path:
    """$PVGEN_CACHE_DIR, else $XDG_CACHE_HOME/pvgen/x86-images, else ~/.cache/..., else a temp dir."""
    configured = os.environ.get("PVGEN_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base / "pvgen" / "x86-images"
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"pvgen-x86-images-{os.getuid()}"


def build_image(workload: str, mode: str = "paravirt", out_dir: Path | str | None = None) -> Path:
    """Builds (or finds in the cache) the image of a workload in 'paravirt' or 'native' mode."""
    return build_image_from_sources(workload, workload_sources(workload), mode, out_dir)


def build_image_from_sources(
    name: str,
    sources: Sequence[Path | str],
    mode: str = "paravirt",
    out_dir: Path | str | None = None,
    *,
    entry: str = "workload_entry",
    include_dirs: Sequence[Path | str] = (),
) -> Path:
    """Builds an image from C/asm sources plus the guest library (and the tables in paravirt mode)."""
    if mode not in MODES:
        raise ImageError(f"unknown mode '{mode}'; expected one of: {', '.join(MODES)}")
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            raise ImageError(f"'{tool}' is not installed; building x86 images needs gcc and GNU ld")
    paths = [Path(s) for s in sources]
    for path in paths:
        if not path.exists():
            raise ImageError(f"{path}: no such source file")
    inputs = paths + guest_sources()
    if mode == "paravirt":
        inputs.append(GENERATED / "c" / "x86_64" / "pvops_tables.c")
    includes = [
        *(Path(d) for d in include_dirs),
        WORKLOADS,
        GUEST,
        GENERATED / "c" / "x86_64",
        GENERATED / "asm" / "x86_64",
        GENERATED / "templates",
    ]
    flags = [*CFLAGS, *(f"-I{d}" for d in includes)]
    if mode == "native":
        flags.append("-DPVGEN_NATIVE")
    headers = _headers_digest(includes)
    digest = _digest(inputs, headers, flags, entry)
    cache = Path(out_dir) if out_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name}-{mode}-{digest[:16]}.elf"
    if target.exists():
        return target
    objects_dir = cache / "objects"
    objects_dir.mkdir(exist_ok=True)
    # Objects are cached too, so images share the compiled guest library and tables.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(lambda source: _compile(source, flags, headers, objects_dir), inputs))
    with tempfile.TemporaryDirectory(prefix="pvgen-image-") as work:
        linked = Path(work) / "image.elf"
        _run(
            ["ld", *LDFLAGS, f"-Ttext={TEXT_ADDRESS:#x}", "-e", entry, "-o", str(linked), *map(str, objects)],
            f"linking {name}",
        )
        _add_fold_section(linked, Path(work))
        _install(linked, target)
    return target


def _add_fold_section(image: Path, work: Path) -> None:
    """Records, in the image, the neighbours of each patch site that boot may fold its padding into."""
    from pvgen.runtime.x86 import sitefold
    from pvgen.runtime.x86.boot import BootError, read_sites

    try:
        sites = read_sites(image)
        if not sites:
            return
        rooms = sitefold.analyse(image, [(site.address, site.length) for site in sites])
    except (BootError, sitefold.FoldError) as error:
        raise ImageError(f"analysing the patch sites: {error}") from None
    if shutil.which("objcopy") is None:
        raise ImageError("'objcopy' is not installed; building x86 images needs GNU binutils")
    records = work / "fold.bin"
    records.write_bytes(sitefold.encode(rooms))
    section = sitefold.FOLD_SECTION
    _run(
        ["objcopy", "--add-section", f"{section}={records}", "--set-section-flags", f"{section}=readonly", str(image)],
        f"adding {section}",
    )


def _compile(source: Path, flags: Sequence[str], headers: str, objects_dir: Path) -> Path:
    extra = ["-D__ASSEMBLY__"] if source.suffix == ".S" else []
    h = hashlib.sha256()
    for item in (*flags, *extra, headers, _tool_version("gcc"), source.name):
        h.update(item.encode() + b"\0")
    h.update(source.read_bytes())
    obj = objects_dir / f"{source.stem}-{h.hexdigest()[:20]}.o"
    if not obj.exists():
        with tempfile.TemporaryDirectory(prefix="pvgen-object-") as work:
            built = Path(work) / "out.o"
            _run(["gcc", *flags, *extra, "-c", str(source), "-o", str(built)], f"compiling {source.name}")
            _install(built, obj)
    return obj


def _install(built: Path, target: Path) -> None:
    """Copies a build product into the cache atomically (another process may build the same)."""
    partial = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.copyfile(built, partial)
    os.replace(partial, target)


def _headers_digest(includes: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for directory in includes:
        if directory.is_dir():
            for path in sorted(directory.rglob("*.h")):
                h.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _digest(inputs: Sequence[Path], headers: str, flags: Sequence[str], entry: str) -> str:
    h = hashlib.sha256()
    items = (*flags, *LDFLAGS, f"entry={entry}", f"text={TEXT_ADDRESS:#x}", headers)
    for item in (*items, _tool_version("gcc"), _tool_version("ld"), _tool_version("objcopy"), _fold_digest()):
        h.update(item.encode() + b"\0")
    for path in inputs:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


_VERSIONS: dict[str, str] = {}


def _fold_digest() -> str:
    """The fold pass is part of the build: a change to it must rebuild images."""
    return hashlib.sha256((HERE / "sitefold.py").read_bytes()).hexdigest()


def _tool_version(tool: str) -> str:
    if tool not in _VERSIONS:
        try:
            done = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
            _VERSIONS[tool] = done.stdout.splitlines()[0] if done.stdout else tool
        except OSError:
            _VERSIONS[tool] = tool
    return _VERSIONS[tool]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageError(f"{what} failed:\n{done.stderr.strip() or done.stdout.strip()}")
