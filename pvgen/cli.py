"""Command line: `pvgen check`, `fmt`, `dump`, `build`, `disasm` and `run`."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path

from pvgen import __version__
from pvgen.check import check
from pvgen.diagnostics import Diagnostics, render_all
from pvgen.dump import to_json
from pvgen.fmt import format_tree
from pvgen.ir import Spec
from pvgen.loader import LoadedSpec, display_path, expand_paths, load
from pvgen.parser import parse_text
from pvgen.writer import write_if_changed

EXIT_OK, EXIT_SPEC_ERROR, EXIT_USAGE = 0, 1, 2
DEFAULT_SPEC = "spec"


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvgen", description="Compile a .pvspec paravirt_ops specification.")
    parser.add_argument("--version", action="version", version=f"pvgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check_cmd = commands.add_parser("check", help="check the spec and report every error")
    check_cmd.add_argument("paths", nargs="*", metavar="PATH", help="spec files or directories (default: spec)")
    fmt_cmd = commands.add_parser("fmt", help="rewrite spec files in canonical form")
    fmt_cmd.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is not canonical")
    fmt_cmd.add_argument("paths", nargs="*", metavar="PATH")
    build_cmd = commands.add_parser("build", help="generate C, asm, Python and the manifest from the spec")
    build_cmd.add_argument("-o", "--output", default="generated", metavar="DIR", help="output directory (generated)")
    build_cmd.add_argument("--check", action="store_true", help="write nothing; exit 1 if DIR is stale")
    build_cmd.add_argument("-M", dest="depfile", metavar="DEPFILE", help="also write a make depfile")
    build_cmd.add_argument(
        "--no-verify", action="store_true", help="keep templates that fail verification (to test the generated suites)"
    )
    build_cmd.add_argument("paths", nargs="*", metavar="PATH")
    disasm_cmd = commands.add_parser("disasm", help="disassemble raw bytes (x86-64 via capstone, IA64 like objdump)")
    disasm_cmd.add_argument("--arch", required=True, choices=("ia64", "x86_64"))
    disasm_cmd.add_argument("--address", type=lambda text: int(text, 0), default=0, help="load address (default 0)")
    source = disasm_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", metavar="FILE", help="a file of raw bytes")
    source.add_argument("--hex", metavar="HEX", help="the bytes as hex digits (spaces allowed)")
    run_cmd = commands.add_parser("run", help="boot an x86-64 or IA64 image on the models and report the run")
    run_cmd.add_argument("image", metavar="IMAGE", help="an ELF image (x86-64 or IA64)")
    run_cmd.add_argument("--hypervisor", default="native", choices=("native", "xen", "kvm"))
    run_cmd.add_argument("--no-patch", action="store_true", help="leave every call site as the indirect call")
    run_cmd.add_argument("--cmdline", default="", help='the kernel command line, e.g. "pv_ops.native=irq,mmu"')
    run_cmd.add_argument("--json", action="store_true", help="print the report as JSON (docs/run-report.md)")
    dump_cmd = commands.add_parser("dump", help="print the checked IR")
    dump_cmd.add_argument("--json", action="store_true", required=True, help="as JSON (docs/ir-json.md)")
    dump_cmd.add_argument("paths", nargs="*", metavar="PATH")
    return parser


def _files(paths: Sequence[str]) -> list[Path]:
    found, missing = expand_paths(paths or [DEFAULT_SPEC])
    if missing:
        raise _UsageError(f"no such file or directory: {', '.join(missing)}")
    if not found:
        raise _UsageError(f"no .pvspec files in: {', '.join(paths or [DEFAULT_SPEC])}")
    return found


def load_and_check(paths: Sequence[str]) -> tuple[Spec | None, LoadedSpec, Diagnostics]:
    """Loads and checks; the spec is None when there were errors."""
    diagnostics = Diagnostics()
    loaded = load(_files(paths), diagnostics)
    spec = check(loaded, diagnostics) if not diagnostics else None
    if spec is None and not diagnostics and loaded.trees:  # pragma: no cover - a checker bug
        raise AssertionError("checker returned no IR and no error")
    return spec, loaded, diagnostics


def _report(loaded: LoadedSpec, diagnostics: Diagnostics) -> None:
    sys.stderr.write(render_all(diagnostics.sorted(), loaded.files))


def _check(args: argparse.Namespace) -> int:
    spec, loaded, diagnostics = load_and_check(args.paths)
    if spec is None:
        _report(loaded, diagnostics)
        return EXIT_SPEC_ERROR
    return EXIT_OK


def _dump(args: argparse.Namespace) -> int:
    spec, loaded, diagnostics = load_and_check(args.paths)
    if spec is None:
        _report(loaded, diagnostics)
        return EXIT_SPEC_ERROR
    sys.stdout.write(to_json(spec))
    return EXIT_OK


def _fmt(args: argparse.Namespace) -> int:
    diagnostics = Diagnostics()
    loaded = load(_files(args.paths), diagnostics)
    if diagnostics:
        _report(loaded, diagnostics)
        return EXIT_SPEC_ERROR
    unformatted = []
    requested = {display_path(path) for path in _files(args.paths)}
    for tree in loaded.trees:
        if tree.path not in requested:
            continue  # an included file: format it by naming it or its directory
        text = loaded.files[tree.path].text
        formatted = format_tree(tree)
        reparsed, error = parse_text(tree.path, formatted)
        if error is not None or reparsed is None:  # pragma: no cover - a formatter bug
            sys.stderr.write(f"{tree.path}: internal error: formatting would not parse back\n")
            return EXIT_SPEC_ERROR
        if formatted == text:
            continue
        unformatted.append(tree.path)
        if not args.check:
            write_if_changed(Path(tree.path), formatted)
    for path in unformatted:
        print(f"{'would reformat' if args.check else 'reformatted'} {path}")
    return EXIT_SPEC_ERROR if (args.check and unformatted) else EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from pvgen import stamp

    named = _files(args.paths)
    out_dir = Path(args.output)
    if not args.check and not args.depfile and not args.no_verify and stamp.up_to_date(named, out_dir):
        return EXIT_OK
    from pvgen import build

    diagnostics = Diagnostics()
    loaded = load(named, diagnostics)
    result = build.build(loaded, out_dir, diagnostics, verify=not args.no_verify) if not diagnostics else None
    if result is None:
        _report(loaded, diagnostics)
        print(f"pvgen: nothing written to {args.output}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    if args.depfile:
        write_if_changed(Path(args.depfile), build.depfile(result, out_dir))
    if args.check:
        found = build.differences(result, out_dir)
        for line in found:
            print(line)
        if found:
            print(f"{args.output} is stale: {len(found)} file(s); run `pvgen build` and commit the result")
            return EXIT_SPEC_ERROR
        return EXIT_OK
    for path in build.write(result, out_dir):
        print(f"wrote {Path(args.output) / path}")
    stamp.write(named, loaded.read_paths, out_dir, result.outputs)
    return EXIT_OK


def _disasm(args: argparse.Namespace) -> int:
    from pvgen.disasm import disasm_command

    if args.hex is not None:
        digits = "".join(args.hex.split())
        try:
            data = bytes.fromhex(digits)
        except ValueError:
            raise _UsageError(f"--hex takes pairs of hex digits, not {args.hex!r}") from None
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as error:
            raise _UsageError(f"cannot read {args.file}: {error.strerror}") from None
    try:
        sys.stdout.write(disasm_command(data, args.arch, args.address))
    except ValueError as error:
        sys.stderr.write(f"pvgen: error: {error}\n")
        return EXIT_SPEC_ERROR
    return EXIT_OK


_ELF_MACHINES = {62: "x86_64", 50: "ia64"}


def _run_error(image: str, error: Exception) -> int:
    message = str(error)
    sys.stderr.write(f"pvgen: error: {message if message.startswith(image) else f'{image}: {message}'}\n")
    return EXIT_SPEC_ERROR


def _run(args: argparse.Namespace) -> int:
    import json
    import struct

    try:
        header = Path(args.image).read_bytes()[:20]
    except OSError as error:
        raise _UsageError(f"cannot read {args.image}: {error.strerror}") from None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        sys.stderr.write(f"pvgen: error: {args.image} is not an ELF image\n")
        return EXIT_SPEC_ERROR
    arch = _ELF_MACHINES.get(struct.unpack_from("<H", header, 18)[0])
    if arch is None:
        sys.stderr.write(
            f"pvgen: error: {args.image}: machine {struct.unpack_from('<H', header, 18)[0]} is not x86-64 or IA64\n"
        )
        return EXIT_SPEC_ERROR
    if arch == "ia64" and args.hypervisor == "kvm":
        raise _UsageError("KVM runs on x86-64 only; an IA64 image runs under native or xen")
    from importlib import import_module

    runner = import_module(f"pvgen.runtime.{'x86' if arch == 'x86_64' else 'ia64'}.run")
    try:
        report = runner.run_image(Path(args.image), args.hypervisor, patch=not args.no_patch, cmdline=args.cmdline)
    except (ValueError, OSError) as error:  # bad images, sites and masks are ValueErrors of the runtimes
        return _run_error(args.image, error)
    except Exception as error:
        if type(error).__name__ not in ("BootError", "ImageError", "MaskError"):
            raise
        return _run_error(args.image, error)
    if args.json:
        document = report.to_json()
        sys.stdout.write((document if isinstance(document, str) else json.dumps(document, indent=1)) + "\n")
    else:
        text = runner.format_report(report) if hasattr(runner, "format_report") else report.format()
        sys.stdout.write(text + "\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    # The run builds many small, long-lived objects and frees almost none: the cyclic
    # collector would only rescan them (a third of the time on a 10,000-op spec).
    gc.disable()
    args = _parser().parse_args(argv)
    handlers = {"check": _check, "fmt": _fmt, "dump": _dump, "build": _build, "disasm": _disasm, "run": _run}
    try:
        return handlers[args.command](args)
    except _UsageError as error:
        sys.stderr.write(f"pvgen: error: {error}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:  # pragma: no cover
        return 130
