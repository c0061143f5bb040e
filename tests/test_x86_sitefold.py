"""The fold pass (runtime/x86/sitefold.py) and the patcher's use of it (boot.py).

The analysis runs on a small image assembled by GNU as and linked by GNU ld with
--emit-relocs, one site per case, so each rule (a referenced start, a branch, a segment
override, a PC-relative neighbour, a reference from data) is seen on its own. The patcher
tests fold synthetic sites against a byte buffer and check the result with capstone.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pvgen.generated import pvops_x86_64 as layer
from pvgen.runtime.x86 import boot, sitefold
from pvgen.runtime.x86.boot import Padder, SiteRecord
from pvgen.runtime.x86.sitefold import FoldRoom, Neighbour

TEXT = 0xFFFF_FFFF_8100_0000

# Each site is `call *pv_ops+8(%rip)` with a record; the comments say what the pass must find.
CASES_S = r"""
	.macro SITE n
.L\n\()0:	call *pv_ops+8(%rip)
.L\n\()1:
	.pushsection .pvgen.sites, "a"
	.balign 8
	.quad .L\n\()0
	.byte 1
	.byte .L\n\()1 - .L\n\()0
	.short 0x1ff
	.balign 8
	.popsection
	.endm

	.text
	.globl entry
entry:
	/* a: before = mov (3 bytes); after = add, then the RIP-relative lea, which ends the run */
	movq %rdi, %rax
	SITE a
	addq $1, %rax
	leaq table(%rip), %rcx
	xorl %edx, %edx
	/* b: someone jumps to the site, so nothing may grow over its start; after = or */
	jmp .Lb0
	nop
	SITE b
	orq $2, %rax
	/* c: the instruction after the site is a jump target; before = and */
	jmp .Lc_next
	andq $3, %rax
	SITE c
.Lc_next:
	subq $4, %rax
	/* d: a branch after the site ends the run at once */
	SITE d
	jne entry
	/* e: an instruction with a segment override takes no pad prefix */
	SITE e
	movq %gs:16, %rdx
	/* f: data names the instruction after the site; g: a RIP-relative instruction before */
	SITE f
.Lf_next:
	incq %rax
	movq table(%rip), %rsi
	SITE g
	decq %rax
	ret

	.data
	.balign 8
	.quad .Lf_next
table:	.quad 0
pv_ops:	.zero 64
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("GNU as and ld are needed")
    work = tmp_path_factory.mktemp("fold")
    source = work / "cases.s"
    source.write_text(CASES_S)
    subprocess.run(["as", "--64", "-o", str(work / "cases.o"), str(source)], check=True)
    image = work / "cases.elf"
    link = ["ld", "-nostdlib", "-static", "--emit-relocs", f"-Ttext={TEXT:#x}", "-e", "entry"]
    subprocess.run([*link, "-o", str(image), str(work / "cases.o")], check=True)
    names = subprocess.run(["nm", str(image)], capture_output=True, text=True, check=True).stdout
    symbols = {line.split()[2]: int(line.split()[0], 16) for line in names.splitlines() if len(line.split()) == 3}
    return image, symbols


def _rooms(image: Path) -> dict[int, FoldRoom]:
    sites = boot.read_sites(image)
    return {room.site: room for room in sitefold.analyse(image, [(s.address, s.length) for s in sites])}


def _site_addresses(image: Path) -> list[int]:
    return sorted(site.address for site in boot.read_sites(image))


def test_the_pass_records_each_rule(cases: tuple[Path, dict[str, int]]) -> None:
    image, _ = cases
    a, b, c, d, e, f, g = _site_addresses(image)
    rooms = _rooms(image)
    # a: the mov before (no one jumps to the site); after it the add and the lea, which is
    # RIP-relative and so the last that may move; the xor after it is not recorded.
    assert rooms[a].before == Neighbour(a - 3, 3, 0, False)
    assert rooms[a].after == (Neighbour(a + 6, 4, 0, False), Neighbour(a + 10, 7, 0, True))
    # b: the jmp lands on the site: no instruction may grow over its start.
    assert rooms[b].before is None and rooms[b].after == (Neighbour(b + 6, 4, 0, False),)
    # c: the instruction after the site is a jump target, the one before is free.
    assert rooms[c].before == Neighbour(c - 4, 4, 0, False) and rooms[c].after == ()
    # d: a branch ends the run (its before is the sub after c_next, which is referenced by
    # c's jmp but keeps its start when it grows).
    assert rooms[d].after == () and rooms[d].before == Neighbour(c + 6, 4, 0, False)
    # e: the gs-prefixed load takes no pad prefix.
    assert e not in rooms or rooms[e].after == ()
    # f: data names the instruction after the site (an absolute relocation the linker kept;
    # the label is local, so no symbol says so).
    assert f not in rooms or rooms[f].after == ()
    # g: the instruction before is RIP-relative, so its end must not move; decq may slide.
    assert rooms[g].before is None and rooms[g].after == (Neighbour(g + 6, 3, 0, False),)


def test_records_round_trip(cases: tuple[Path, dict[str, int]]) -> None:
    image, _ = cases
    rooms = list(_rooms(image).values())
    assert sitefold.decode(sitefold.encode(rooms)) == {room.site: room for room in rooms}
    with pytest.raises(sitefold.FoldError, match="not a whole number of 16-byte records"):
        sitefold.decode(b"\0" * 17)


def test_the_section_is_what_the_pass_finds(cases: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    """image.py adds `.pvgen.fold` with objcopy; boot reads it back."""
    image, _ = cases
    copy = tmp_path / "with-fold.elf"
    shutil.copyfile(image, copy)
    assert boot.read_folds(copy) == {}
    from pvgen.runtime.x86.image import _add_fold_section

    _add_fold_section(copy, tmp_path)
    assert boot.read_folds(copy) == _rooms(image)


def test_an_unreadable_image_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"\x7fELF not really")
    with pytest.raises(sitefold.FoldError, match=r"bad\.elf: cannot read the ELF image"):
        sitefold.analyse(bad, [])


# -- the patcher ---------------------------------------------------------------------------------


class Buffer:
    """Code bytes at TEXT, read and written as boot does."""

    def __init__(self, code: bytes) -> None:
        self.code = bytearray(code)

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.code[address - TEXT : address - TEXT + size])

    def write(self, address: int, data: bytes) -> None:
        self.code[address - TEXT : address - TEXT + len(data)] = data


def _instructions(code: bytes) -> list[str]:
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    decoded = list(md.disasm(code, TEXT))
    assert sum(i.size for i in decoded) == len(code)
    return [f"{i.mnemonic} {i.op_str}".replace("cs:", "").strip() for i in decoded]


MOV = bytes.fromhex("4889f8")  # mov %rdi, %rax
ADD = bytes.fromhex("4883c001")  # add $1, %rax
LEA = bytes.fromhex("488d0d00100000")  # lea 0x1000(%rip), %rcx
SITE = b"\xff\x15" + bytes(4)


def _fold(code: bytes, room: FoldRoom, body: bytes, spare: int) -> tuple[Buffer, tuple[int, bytes] | None]:
    buffer = Buffer(code)
    folder = boot._Folder(Padder.of(layer), {room.site: room}, buffer.read)
    site = SiteRecord(room.site, 1, len(SITE), 0x1FF)
    result = folder.fold(site, body, spare)
    if result is not None:
        buffer.write(*result)
    return buffer, result


def test_an_empty_site_folds_into_the_instruction_before_and_after() -> None:
    site = TEXT + len(MOV)
    room = FoldRoom(site, Neighbour(TEXT, 3, 0, False), (Neighbour(site + 6, 4, 0, False),))
    buffer, result = _fold(MOV + SITE + ADD, room, b"", 6)
    assert result is not None and result[0] == TEXT
    assert buffer.code == b"\x2e" * 5 + MOV + b"\x2e" + ADD
    assert _instructions(bytes(buffer.code)) == ["mov rax, rdi", "add rax, 1"]


def test_a_site_with_code_slides_only_what_follows() -> None:
    """The site's own instructions stay at its start; a PC-relative follower must take all the
    rest, so that its end (and with it its target) does not move."""
    site = TEXT + len(MOV)
    room = FoldRoom(site, Neighbour(TEXT, 3, 0, False), (Neighbour(site + 6, 7, 0, True),))
    body = bytes.fromhex("0f20d8")  # mov %cr3, %rax
    buffer, result = _fold(MOV + SITE + LEA, room, body, 3)
    assert result is not None and result[0] == site
    assert buffer.read(site, 13) == body + b"\x2e" * 3 + LEA
    assert _instructions(bytes(buffer.code)) == ["mov rax, rdi", "mov rax, cr3", "lea rcx, [rip + 0x1000]"]
    # The lea cannot take all of six bytes (five prefixes at most): no fold at all.
    _, refused = _fold(MOV + SITE + LEA, FoldRoom(site, None, room.after), b"", 6)
    assert refused is None


def test_a_neighbour_serves_one_site() -> None:
    first = TEXT
    second = TEXT + 6 + len(ADD)
    code = SITE + ADD + SITE + ADD
    rooms = {
        first: FoldRoom(first, None, (Neighbour(first + 6, 4, 0, False),)),
        second: FoldRoom(second, Neighbour(first + 6, 4, 0, False), (Neighbour(second + 6, 4, 0, False),)),
    }
    buffer = Buffer(code)
    folder = boot._Folder(Padder.of(layer), rooms, buffer.read)
    # The first site needs six bytes but its only follower takes five: it keeps its NOP, and
    # the add stays free for the second site.
    assert folder.fold(SiteRecord(first, 1, 6, 0x1FF), b"", 6) is None
    folded = folder.fold(SiteRecord(second, 1, 6, 0x1FF), b"", 6)
    assert folded == (first + 6, b"\x2e" * 5 + ADD + b"\x2e" + ADD)
    assert folder.fold(SiteRecord(second, 1, 6, 0x1FF), b"", 6) is None  # both neighbours are taken


def test_without_a_pad_prefix_nothing_folds() -> None:
    room = FoldRoom(TEXT + 3, Neighbour(TEXT, 3, 0, False), (Neighbour(TEXT + 9, 4, 0, False),))
    buffer = Buffer(MOV + SITE + ADD)
    folder = boot._Folder(Padder(tuple(layer.NOPS), None, 0), {room.site: room}, buffer.read)
    assert folder.fold(SiteRecord(room.site, 1, 6, 0x1FF), b"", 6) is None


def test_a_stale_record_is_refused_with_its_address() -> None:
    """A record that does not match the bytes (the image changed after the pass) is a BootError."""
    room = FoldRoom(TEXT + 3, Neighbour(TEXT, 3, 1, False), ())
    folder = boot._Folder(Padder.of(layer), {room.site: room}, Buffer(MOV + SITE + ADD).read)
    with pytest.raises(boot.BootError, match=r"site at 0xffffffff81000003: the \.pvgen\.fold record of the"):
        folder.fold(SiteRecord(room.site, 1, 6, 0x1FF), b"", 6)


def test_a_malformed_section_is_a_boot_error(cases: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    image, _ = cases
    bad = tmp_path / "bad-fold.elf"
    (tmp_path / "fold.bin").write_bytes(b"\0" * 17)
    subprocess.run(
        ["objcopy", "--add-section", f".pvgen.fold={tmp_path / 'fold.bin'}", str(image), str(bad)], check=True
    )
    with pytest.raises(boot.BootError, match=r"bad-fold\.elf: \.pvgen\.fold is 17 bytes, not a whole number"):
        boot.read_folds(bad)


def test_an_image_without_relocations_is_refused(cases: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    """Without the relocations (`ld --emit-relocs`) the pass cannot see what data refers to, so
    it records nothing rather than something unsafe."""
    image, _ = cases
    stripped = tmp_path / "stripped.elf"
    subprocess.run(["objcopy", "--remove-relocations=*", str(image), str(stripped)], check=True)
    sites = [(s.address, s.length) for s in boot.read_sites(image)]
    with pytest.raises(sitefold.FoldError, match=r"stripped\.elf: no relocations for \.pvgen\.sites; link the image"):
        sitefold.analyse(stripped, sites)
