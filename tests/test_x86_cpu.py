"""The x86-64 CPU model against unicorn, gcc and GNU as; faults, hooks and counters.

Differential tests run the same bytes on bare-metal unicorn (kernel addresses, TLB in
virtual mode) and on the model, then compare every register, the flags the SDM
defines, and memory. The code comes from gcc (kernel-style C below), from hand-written
asm, and from a hypothesis grammar of the modelled instruction subset.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pvgen.runtime.x86 import (
    ArchFault,
    Breakpoint,
    Cpu,
    DivideError,
    GeneralProtection,
    InvalidOpcode,
    PageFault,
    SensitiveInsn,
    SoftwareInterrupt,
)
from pvgen.runtime.x86.elf import load_elf

unicorn = pytest.importorskip("unicorn")
from unicorn import x86_const as UX  # noqa: E402

TOOLS = ("gcc", "as", "ld", "objcopy", "nm")
pytestmark = pytest.mark.skipif(any(shutil.which(tool) is None for tool in TOOLS), reason="needs gcc and GNU binutils")

CODE = 0xFFFF_FFFF_8100_0000
DATA = 0xFFFF_FFFF_8200_0000
DATA_SIZE = 0x2000
STACK = 0xFFFF_C900_0000_0000
STACK_SIZE = 0x4000
RET = 0xFFFF_FFFF_8F00_0000  # a mapped `hlt`: unicorn stops there, the model's sentinel
REGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
UC_REGS = tuple(getattr(UX, f"UC_X86_REG_{name.upper()}") for name in REGS)
ARGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
ARITH = CF | PF | AF | ZF | SF | OF
KERNEL_CFLAGS = (
    "-O2 -mcmodel=kernel -fno-pic -mno-red-zone -ffreestanding -fno-stack-protector -fcf-protection=none "
    "-fno-asynchronous-unwind-tables -mno-sse -mno-mmx -mno-sse2 -mno-3dnow -mno-avx"
).split()


# -- toolchain ---------------------------------------------------------------------------


def assemble(snippets: list[str], workdir: Path) -> tuple[bytes, list[int]]:
    """Assembles snippets (each ends in `ret`) into one .text; returns it and their offsets."""
    lines = [".text"]
    for i, text in enumerate(snippets):
        lines += [f"snippet_{i}:", text, "ret", ".p2align 4, 0xcc"]
    source = workdir / "snippets.s"
    source.write_text("\n".join(lines) + "\n")
    obj, binary = workdir / "snippets.o", workdir / "snippets.bin"
    done = subprocess.run(["as", "--64", "-o", str(obj), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, f"as failed:\n{done.stderr}\n{source.read_text()}"
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(binary)], check=True)
    symbols = subprocess.run(["nm", str(obj)], check=True, capture_output=True, text=True).stdout
    offsets = {}
    for line in symbols.splitlines():
        value, _, name = line.split()
        if name.startswith("snippet_"):
            offsets[int(name[8:])] = int(value, 16)
    return binary.read_bytes(), [offsets[i] for i in range(len(snippets))]


@pytest.fixture(scope="module")
def kernel_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("kernel")
    source = workdir / "kernel.c"
    source.write_text(KERNEL_C)
    obj, image = workdir / "kernel.o", workdir / "kernel.elf"
    subprocess.run(["gcc", *KERNEL_CFLAGS, "-c", str(source), "-o", str(obj)], check=True)
    subprocess.run(
        ["ld", "-Ttext=0xffffffff81000000", "-e", "0", "-z", "max-page-size=4096", "-o", str(image), str(obj)],
        check=True,
    )
    return image


# -- the two machines ------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    regs: tuple[int, ...]
    rip: int
    rflags: int
    memory: tuple[bytes, ...]
    fault: int | None  # vector


@attrs.define
class Setup:
    """One program and its starting state, for both machines."""

    regions: list[tuple[int, int, str, bytes]]  # base, size, perms, contents
    entry: int
    regs: dict[str, int] = attrs.Factory(dict)
    rflags: int = 0x2
    gs_base: int = 0
    compare: list[tuple[int, int]] = attrs.Factory(list)  # memory ranges to compare
    budget: int = 2_000_000

    def stack_top(self) -> int:
        return STACK + STACK_SIZE - 8


def run_model(setup: Setup, before: Callable[[Cpu], None] | None = None) -> tuple[Outcome, Cpu]:
    cpu = Cpu()
    for base, size, perms, data in setup.regions:
        cpu.memory.map(base, size, perms, data)
    cpu.memory.map(STACK, STACK_SIZE, "rw")
    cpu.memory.map(RET, 0x1000, "rx", b"\xf4")
    cpu.sentinel = RET
    for name, value in setup.regs.items():
        cpu.set_reg(name, value)
    cpu.rflags = setup.rflags
    cpu.gs_base = setup.gs_base
    if before is not None:
        before(cpu)
    fault = None
    try:
        cpu.run(setup.entry, setup.stack_top() + 8, setup.budget)
    except ArchFault as error:
        fault = error.vector
    memory = tuple(cpu.memory.read(base, size) for base, size in setup.compare)
    return Outcome(tuple(cpu.state[:16]), cpu.rip, cpu.rflags, memory, fault), cpu


UNMAPPED = (unicorn.UC_ERR_READ_UNMAPPED, unicorn.UC_ERR_WRITE_UNMAPPED, unicorn.UC_ERR_FETCH_UNMAPPED)


def run_unicorn(setup: Setup) -> Outcome:
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
    for base, size, _perms, data in setup.regions:
        uc.mem_map(base, size)
        uc.mem_write(base, data)
    uc.mem_map(STACK, STACK_SIZE)
    uc.mem_map(RET, 0x1000)
    uc.mem_write(RET, b"\xf4")
    for name, value in setup.regs.items():
        uc.reg_write(UC_REGS[REGS.index(name)], value)
    uc.reg_write(UX.UC_X86_REG_RFLAGS, setup.rflags)
    uc.reg_write(UX.UC_X86_REG_GS_BASE, setup.gs_base)
    sp = setup.stack_top()
    uc.mem_write(sp, RET.to_bytes(8, "little"))
    uc.reg_write(UX.UC_X86_REG_RSP, sp)
    faults: list[int] = []

    def interrupt(uc: Any, number: int, _user: Any) -> None:
        faults.append(number)
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, interrupt)
    try:
        uc.emu_start(setup.entry, RET, count=setup.budget)
    except unicorn.UcError as error:
        if error.errno not in UNMAPPED:
            raise
        faults.append(14)
    memory = tuple(bytes(uc.mem_read(base, size)) for base, size in setup.compare)
    regs = tuple(uc.reg_read(reg) for reg in UC_REGS)
    return Outcome(
        regs, uc.reg_read(UX.UC_X86_REG_RIP), uc.reg_read(UX.UC_X86_REG_RFLAGS), memory, (faults or [None])[0]
    )


def assert_same(setup: Setup, undefined_flags: int = 0, label: str = "", faults: tuple[int, ...] = ()) -> Cpu:
    """Runs both machines; `faults` are the vectors the program may legitimately raise."""
    model, cpu = run_model(setup)
    reference = run_unicorn(setup)
    problems = []
    if model.fault != reference.fault:
        problems.append(f"fault: model {model.fault} unicorn {reference.fault}")
    elif model.fault is not None and model.fault not in faults:
        problems.append(f"both machines raised vector {model.fault}: the program is wrong")
    for name, mine, theirs in zip(REGS, model.regs, reference.regs, strict=True):
        if mine != theirs:
            problems.append(f"{name}: model {mine:#x} unicorn {theirs:#x}")
    if model.fault is None:
        mask = (ARITH & ~undefined_flags) | 0x600  # defined arithmetic flags, IF, DF
        if model.rflags & mask != reference.rflags & mask:
            problems.append(f"rflags & {mask:#x}: model {model.rflags:#x} unicorn {reference.rflags:#x}")
        if model.rip != reference.rip:
            problems.append(f"rip: model {model.rip:#x} unicorn {reference.rip:#x}")
    for (base, _size), mine, theirs in zip(setup.compare, model.memory, reference.memory, strict=True):
        if mine != theirs:
            first = next(i for i in range(len(mine)) if mine[i] != theirs[i])
            problems.append(
                f"memory at {base + first:#x}: model {mine[first : first + 8].hex()} unicorn "
                f"{theirs[first : first + 8].hex()}"
            )
    assert not problems, f"{label}\n" + "\n".join(problems)
    return cpu


# -- gcc-built kernel-style functions ----------------------------------------------------------

KERNEL_C = r"""
typedef unsigned long u64;
typedef long s64;
typedef unsigned int u32;
typedef int s32;
typedef unsigned short u16;
typedef unsigned char u8;

struct pv_irq_ops { void (*irq_disable)(void); void (*irq_enable)(void); u64 (*save_fl)(void); };
struct page { u64 flags; struct page *next; u32 refcount; u16 order; u8 mapped; };

static void native_irq_disable(void) { asm volatile("cli" ::: "memory"); }
static void native_irq_enable(void) { asm volatile("sti" ::: "memory"); }
static u64 native_save_fl(void) { u64 f; asm volatile("pushfq; popq %0" : "=r"(f) :: "memory"); return f; }
struct pv_irq_ops pv_irq_ops = { native_irq_disable, native_irq_enable, native_save_fl };

u64 ptes[512];
u8 bitmap[64];
struct page pages[16];
u8 buffer[512];
u8 other[512];
u32 spin;
s64 table[8] = { 5, -3, 100, -100, 7, 0, 1, -1 };

/* A pv_ops site of the v4.x shape: `call *pv_irq_ops+off` through an absolute slot. */
u64 pv_sites(u64 n)
{
    u64 acc = 0;
    for (u64 i = 0; i < n; i++) {
        asm volatile("call *%c0" :: "i"(&pv_irq_ops.irq_disable) : "rax", "rcx", "rdx", "rsi", "rdi",
                 "r8", "r9", "r10", "r11", "memory", "cc");
        acc += pv_irq_ops.save_fl() & 0x200;
        pv_irq_ops.irq_enable();
        acc += pv_irq_ops.save_fl() & 0x200;
    }
    return acc;
}

u64 irq_save_restore(u64 n)
{
    u64 acc = 0;
    for (u64 i = 0; i < n; i++) {
        u64 flags;
        asm volatile("pushfq; popq %0; cli" : "=r"(flags) :: "memory");
        acc += i ^ flags;
        asm volatile("pushq %0; popfq" :: "r"(flags) : "memory", "cc");
    }
    return acc;
}

u64 set_ptes(u64 start, u64 count, u64 prot)
{
    u64 present = 0;
    for (u64 i = 0; i < count && i < 512; i++) {
        u64 pte = ((start + i) << 12) | prot;
        if (i & 3)
            pte |= 1UL << 63;
        ptes[i] = pte;
        present += (ptes[(i * 5) & 511] & 1);
    }
    return present;
}

u64 checksum(const u8 *p, u64 len)
{
    u64 sum = 0;
    for (u64 i = 0; i < len; i++)
        sum = (sum << 5) + sum + p[i];
    return sum ^ (sum >> 17);
}

u64 div_mix(u64 a, u64 b, s64 c, s64 d)
{
    u64 q = a / (b | 1);
    u64 r = a % (b | 3);
    s64 sq = c / (d | 1);
    s64 sr = c % (d | 5);
    u32 q32 = (u32)a / ((u32)b | 1);
    return q + r * 3 + (u64)sq * 7 + (u64)sr + q32;
}

u64 mul_high(u64 a, u64 b)
{
    unsigned __int128 p = (unsigned __int128)a * b;
    __int128 s = (__int128)(s64)a * (s64)b;
    return (u64)(p >> 64) ^ (u64)p ^ (u64)(s >> 64);
}

u64 bits(u64 x, u64 y)
{
    u64 r = 0;
    r += __builtin_ctzl(x | 1);
    r += __builtin_clzl(y | 1) << 8;
    r += __builtin_bswap64(x) >> 3;
    r += __builtin_bswap32((u32)y);
    r ^= (x << (y & 63)) | (x >> ((64 - (y & 63)) & 63));
    r += (s64)x >> (y & 31);
    r += (u32)x >> (y & 15);
    r += (u8)(x >> 3) + (s32)(short)y;
    return r;
}

u64 shifts128(u64 lo, u64 hi, u64 n)
{
    unsigned __int128 v = ((unsigned __int128)hi << 64) | lo;
    unsigned __int128 l = v << (n & 127);
    __int128 r = (__int128)v >> (n & 127);
    return (u64)l ^ (u64)(l >> 64) ^ (u64)r ^ (u64)(r >> 64);
}

s64 compare(s64 a, s64 b, u64 c, u64 d)
{
    s64 r = 0;
    r += a < b ? 1 : 2;
    r += c > d ? 4 : 8;
    r += (a == (s64)c) << 4;
    r += (s32)a <= (s32)b ? 32 : 64;
    r += (u8)c >= (u8)d ? 128 : 256;
    r = a > 0 ? r : -r;
    return r + (b >= 0 ? b : -b);
}

static int classify(u64 v)
{
    switch (v & 15) {
    case 0: return 11;
    case 1: return 23;
    case 2: return 5;
    case 3: return 97;
    case 5: return 3;
    case 7: return 71;
    case 8: return 41;
    case 9: return 2;
    case 12: return 17;
    default: return -1;
    }
}

s64 dispatch(u64 seed, u64 n)
{
    s64 acc = 0;
    for (u64 i = 0; i < n; i++) {
        acc += classify(seed);
        seed = seed * 6364136223846793005UL + 1442695040888963407UL;
    }
    return acc;
}

u64 fib(u64 n)
{
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

u64 list_walk(u64 n)
{
    for (u64 i = 0; i < 16; i++) {
        pages[i].flags = i * 0x1001;
        pages[i].next = i + 1 < 16 ? &pages[i + 1] : 0;
        pages[i].refcount = (u32)i;
        pages[i].order = (u16)(i & 3);
        pages[i].mapped = (u8)(i & 1);
    }
    u64 acc = 0;
    for (u64 r = 0; r < n; r++)
        for (struct page *p = &pages[0]; p; p = p->next) {
            p->refcount += p->mapped;
            acc += p->flags ^ p->refcount ^ ((u64)p->order << 40);
        }
    return acc;
}

u64 bitmap_ops(u64 a, u64 b)
{
    for (int i = 0; i < 64; i++)
        bitmap[i] = 0;
    u64 *words = (u64 *)bitmap;
    for (u64 i = 0; i < 200; i++) {
        u64 bit = (a + i * b) & 511;
        asm volatile("btsq %1, %0" : "+m"(*words) : "r"(bit) : "memory");
    }
    u64 count = 0;
    for (u64 bit = 0; bit < 512; bit++) {
        unsigned char c;
        asm volatile("btq %2, %1; setc %0" : "=r"(c) : "m"(*words), "r"(bit) : "memory");
        count += c;
    }
    return count;
}

u64 copy_fill(u64 seed)
{
    for (int i = 0; i < 512; i++)
        buffer[i] = (u8)(seed + i * 7);
    __builtin_memcpy(other, buffer, 256);
    __builtin_memset(other + 256, (int)(seed & 0xff), 200);
    struct big { u64 w[24]; } *dst = (struct big *)(other + 64), *src = (struct big *)buffer;
    *dst = *src;
    u64 sum = 0;
    for (int i = 0; i < 512; i++)
        sum = sum * 31 + other[i];
    return sum;
}

u64 atomics(u64 n)
{
    u64 acc = 0;
    for (u64 i = 0; i < n; i++) {
        while (__sync_lock_test_and_set(&spin, 1))
            asm volatile("pause");
        acc += __sync_fetch_and_add(&ptes[3], i);
        acc += __sync_bool_compare_and_swap(&ptes[4], i, i + 1);
        acc += __sync_val_compare_and_swap(&ptes[5], 0, i);
        __sync_lock_release(&spin);
    }
    return acc + ptes[3] + ptes[4] + ptes[5];
}

static u64 apply(u64 (*fn)(u64, u64), u64 a, u64 b) { return fn(a, b); }
static u64 add_fn(u64 a, u64 b) { return a + b; }
static u64 xor_fn(u64 a, u64 b) { return a ^ (b << 1); }
u64 (*volatile fns[2])(u64, u64) = { add_fn, xor_fn };

u64 indirect(u64 a, u64 b)
{
    u64 r = 0;
    for (u64 i = 0; i < 8; i++)
        r += apply(fns[i & 1], a + i, b);
    return r;
}

s64 sat_sum(const s64 *v, u64 n, s64 lo, s64 hi)
{
    s64 s = 0;
    for (u64 i = 0; i < n; i++) {
        s += v[i];
        s = s < lo ? lo : s;
        s = s > hi ? hi : s;
    }
    return s;
}

s64 sum_table(s64 lo, s64 hi) { return sat_sum(table, 8, lo, hi); }

u64 narrow(u64 x, u64 y)
{
    u8 a = (u8)x;
    u16 b = (u16)y;
    s32 c = (s32)x;
    a += (u8)y;
    a ^= (u8)(a << 3);
    b = (u16)(b * 3 + a);
    b = (u16)(b >> 2) | (u16)(b << 14);
    c = c * 5 - (s32)b;
    c >>= 3;
    return (u64)a | (u64)b << 8 | (u64)(u32)c << 24 | (u64)((s64)c < 0) << 60;
}
"""

M64 = (1 << 64) - 1
KERNEL_CASES = [
    ("pv_sites", (5,)),
    ("irq_save_restore", (7,)),
    ("set_ptes", (3, 40, 0x63)),
    ("set_ptes", (0, 600, 7)),
    ("checksum", (CODE, 300)),
    ("div_mix", (1000, 7, -55 & M64, 3)),
    ("div_mix", (M64, 1 << 63, 1 << 63, M64)),  # INT64_MIN / -1: #DE on both (checked below)
    ("div_mix", (5, 0, 7, 0)),
    ("mul_high", (M64, M64)),
    ("mul_high", (-5 & M64, 7)),
    ("bits", (0x1_2345_6789, 5)),
    ("bits", (1 << 63, 63)),
    ("shifts128", (1, 2, 3)),
    ("shifts128", (M64, 1 << 63, 127)),
    ("shifts128", (5, 6, 64)),
    ("compare", (1, 2, 3, 4)),
    ("compare", (-5 & M64, 3, M64, 0)),
    ("compare", (0, 0, 0, 0)),
    ("dispatch", (12345, 50)),
    ("fib", (12,)),
    ("list_walk", (3,)),
    ("bitmap_ops", (3, 7)),
    ("copy_fill", (0x55,)),
    ("atomics", (5,)),
    ("indirect", (3, 4)),
    ("sum_table", (-50 & M64, 50)),
    ("narrow", (0x1234_5678_ABCD, 0xFEDC_BA98)),
    ("narrow", (M64, M64)),
]


def kernel_setup(image_path: Path, function: str, args: tuple[int, ...]) -> Setup:
    probe = Cpu()
    image = load_elf(probe.memory, image_path)
    regions = [(r.base, r.size, r.perms, bytes(r.data)) for r in probe.memory.regions]
    regs = {name: 0x1111 * (i + 1) for i, name in enumerate(REGS) if name != "rsp"}
    regs.update(zip(ARGS, args, strict=False))
    writable = [(base, size) for base, size, perms, _ in regions if perms & 2]
    return Setup(regions, image.symbols[function], regs, 0x202, compare=[*writable, (STACK, STACK_SIZE)])


@pytest.mark.parametrize(("function", "args"), KERNEL_CASES, ids=[f"{f}{a}" for f, a in KERNEL_CASES])
def test_kernel_functions_match_unicorn(kernel_image: Path, function: str, args: tuple[int, ...]) -> None:
    faults = (0,) if args == (M64, 1 << 63, 1 << 63, M64) else ()
    assert_same(kernel_setup(kernel_image, function, args), label=function, faults=faults)


def test_kernel_image_uses_the_pv_site_shape(kernel_image: Path) -> None:
    """The gcc build really contains `call *abs32` (ff 14 25) and the irq templates."""
    cpu = Cpu()
    image = load_elf(cpu.memory, kernel_image)
    text = cpu.memory.read(CODE, 0x1000)
    assert bytes.fromhex("ff1425") in text
    for template in ("fa", "fb", "9c"):
        assert bytes.fromhex(template) in text
    assert image.symbols["pv_sites"] >= CODE


# -- hand-written asm ------------------------------------------------------------------------------

ASM_CASES = {
    "nops": """
        nop; nopl (%rax); nopl 0(%rax); nopw 0(%rax,%rax,1); xchg %ax, %ax
        .byte 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00
        .byte 0x0f, 0x1f, 0x80, 0, 0, 0, 0
        .byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
        endbr64; pause; movq $7, %rax
    """,
    "movabs_and_moffs": """
        movabs $0x123456789abcdef0, %rax
        movabs %rax, 0xffffffff82000100
        movabs 0xffffffff82000100, %eax
        movabs 0xffffffff82000104, %al
    """,
    "gs_operands": """
        movq $0x55, %gs:0x10
        movq %gs:0x10, %rcx
        movl $8, %edx
        addq %gs:8(%rdx), %rcx
        incl %gs:0x20
        movq %gs:0x20, %rax
    """,
    "rip_relative": """
        movq value(%rip), %rax
        addq value+8(%rip), %rax
        leaq value(%rip), %rcx
        subq %rcx, %rax
        jmp 1f
        value: .quad 0x1111, 0x2222
        1:
    """,
    "indirect_calls": """
        leaq 1f(%rip), %rax
        movq %rax, 0x40(%rbx)
        call *%rax
        call *0x40(%rbx)
        leaq 2f(%rip), %rcx
        jmp *%rcx
        ud2
        1: addq $1, %rdx; ret
        2: movq %rdx, %rax
    """,
    "jump_table": """
        leaq table(%rip), %rcx
        movl $2, %eax
        movslq (%rcx,%rax,4), %rdx
        addq %rcx, %rdx
        jmp *%rdx
        t0: movl $10, %edx; jmp 9f
        t1: movl $11, %edx; jmp 9f
        t2: movl $12, %edx; jmp 9f
        table: .long t0 - table, t1 - table, t2 - table
        9: cmpl $11, %edx
        je 8f
        leaq t1(%rip), %rax
        movq %rax, 0x48(%rbx)
        movl $1, %esi
        jmp *0x40(%rbx,%rsi,8)
        8: movl %edx, %eax
    """,
    "string_ops": """
        leaq 0x10(%rbx), %rdi; movl $0x41, %eax; movl $20, %ecx; rep stosb
        leaq 0x40(%rbx), %rdi; movq $-1, %rax; movl $5, %ecx; rep stosq
        leaq 0x10(%rbx), %rsi; leaq 0x100(%rbx), %rdi; movl $13, %ecx; rep movsb
        leaq 0x40(%rbx), %rsi; leaq 0x200(%rbx), %rdi; movl $5, %ecx; rep movsq
        leaq 0x18(%rbx), %rsi; leaq 0x10(%rbx), %rdi; movl $7, %ecx; rep movsl
        leaq 0x10(%rbx), %rsi; leaq 0x14(%rbx), %rdi; movl $9, %ecx; rep movsb
        std; leaq 0x300(%rbx), %rdi; movl $4, %ecx; movl $0x77, %eax; rep stosw; cld
        leaq 0x10(%rbx), %rsi; lodsq; lodsb
        leaq 0x100(%rbx), %rsi; leaq 0x10(%rbx), %rdi; movl $16, %ecx; repe cmpsb
        leaq 0x10(%rbx), %rdi; movb $0x41, %al; movl $30, %ecx; repne scasb
        movsq; stosl
    """,
    "lea_forms": """
        leaq 8(%rax,%rcx,4), %rdx; leal -3(%rcx,%rcx,2), %esi; leaw 7(%rdi), %r8w
        leaq (,%rax,8), %r9; leal 0x7fffffff(%rax), %r10d; leaq -1(%rax,%rcx), %r11
        leal (%eax,%ecx,2), %r12d; leaq 0x40(%rbx), %r13; addr32 leaq 5(%eax,%ecx,2), %r14
    """,
    "stack_frames": """
        pushq %rbp; movq %rsp, %rbp; subq $0x20, %rsp
        movq %rax, -8(%rbp); pushq $-5; pushq 0x10(%rbx); popq %rcx; popq %rdx
        pushw $0x1234; popw %si; pushq %rsp; popq %r8
        pushq %rax; popq 0x80(%rbx); pushq $9; popq -8(%rsp); subq $8, %rsp; popq %r9
        leave
    """,
    "rep_ret_and_high_bytes": """
        movl $0x1234, %eax; movb %ah, %cl; addb %al, %ah; xchgb %ah, %al
        movzbl %ah, %edx; movb $7, %dh; subb %dh, %ch; cmpb %ah, %cl; sete %bh
        call 1f; jmp 2f
        1: rep ret
        2:
    """,
    "bit_instructions": """
        movq $0x12345678, %rax; btq $3, %rax; setc %cl; btsq $40, %rax; btrl $4, %eax
        btcw $15, %ax; movl $70, %edx; btq %rdx, %rax; btsq %rdx, 0x20(%rbx)
        movq $-3, %rdx; btrq %rdx, 0x40(%rbx); bsfq %rax, %r8; bsrl %eax, %r9d
        bswapq %rax; bswapl %ecx; popcntq %rax, %r10
    """,
    "cli_sti_pushf_popf": """
        cli; pushfq; popq %rax; sti; pushfq; popq %rcx
        pushq $0x8d5; popfq; pushfq; popq %rdx; cli; pushq $0x202; popfq
    """,
}


@pytest.mark.parametrize("name", sorted(ASM_CASES))
def test_asm_snippets_match_unicorn(name: str, tmp_path: Path) -> None:
    code, offsets = assemble([ASM_CASES[name]], tmp_path)
    data = random.Random(name).randbytes(DATA_SIZE)
    regs = {name: 0x0101_0101 * (i + 3) for i, name in enumerate(REGS)}
    regs.update(rbx=DATA + 0x800, rbp=DATA + 0x1000, rsp=0)
    regs.pop("rsp")
    setup = Setup(
        [(CODE, 0x2000, "rwx", code), (DATA, DATA_SIZE, "rw", data)],
        CODE + offsets[0],
        regs,
        0x202,
        gs_base=DATA,
        compare=[(DATA, DATA_SIZE), (STACK, STACK_SIZE)],
    )
    # bsf/bsr leave the arithmetic flags other than ZF undefined, popcnt defines them.
    undefined = ARITH & ~ZF if name == "bit_instructions" else 0
    assert_same(setup, undefined, label=name)


EDGE_VALUES = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 63, M64, M64 - 1)
PRODUCERS = ("cmp{s} %rsi_, %rdi_", "sub{s} %rsi_, %rdi_", "add{s} %rsi_, %rdi_", "test{s} %rsi_, %rdi_",
             "and{s} %rsi_, %rdi_", "inc{s} %rdi_", "dec{s} %rdi_", "neg{s} %rdi_", "shl{s} $1, %rdi_",
             "sar{s} $1, %rdi_", "imul{s} %rsi_, %rdi_", "adc{s} %rsi_, %rdi_", "sbb{s} %rsi_, %rdi_")  # fmt: skip


@pytest.mark.parametrize("bits", [8, 32, 64])
def test_every_condition_after_every_producer_matches_unicorn(bits: int, tmp_path: Path) -> None:
    """setcc and jcc for all 16 conditions after each flag producer, on edge operands.

    setcc reads the flags in the producer's trace (specialised expressions); the jcc sits
    behind a `jmp` that ends the trace, so it reads them across blocks. Only the
    conditions the SDM defines after the producer are compared (imul: CF and OF).
    """
    suffix = SUFFIX[bits]
    producers = [p for p in PRODUCERS if not (bits == 8 and p.startswith("imul"))]
    lines, compared = [], []
    for producer in producers:
        text = producer.format(s=suffix).replace("%rsi_", "%" + sized("rsi", bits))
        text = text.replace("%rdi_", "%" + sized("rdi", bits))
        for cc in CONDITIONS:
            slot = len(compared)
            lines.append(f"movq %r8, %rdi; movq %r9, %rsi; stc; {text}; set{cc} {slot}(%rbx)")
            lines.append(f"movq %r8, %rdi; movq %r9, %rsi; clc; {text}; jmp 1f; 1: j{cc} 2f")
            lines.append(f"movb $1, {slot + 1}(%rbx); 2:")
            defined = not producer.startswith("imul") or not CONDITIONS[cc] & ~(CF | OF)
            compared += [defined, defined]
    code, offsets = assemble(["\n".join(lines)], tmp_path)
    cpu = Cpu()
    cpu.memory.map(CODE, 0x8000, "rx", code)
    cpu.memory.map(DATA, DATA_SIZE, "rw")
    cpu.memory.map(STACK, STACK_SIZE, "rw")
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
    for base, size in ((CODE, 0x8000), (DATA, DATA_SIZE), (STACK, STACK_SIZE), (RET, 0x1000)):
        uc.mem_map(base, size)
    uc.mem_write(CODE, code)
    uc.mem_write(RET, b"\xf4")
    for a in EDGE_VALUES:
        for b in EDGE_VALUES[::3]:
            blank = bytes(len(compared))
            cpu.memory.write(DATA, blank)
            cpu.set_reg("rbx", DATA)
            cpu.set_reg("r8", a)
            cpu.set_reg("r9", b)
            assert cpu.run(CODE + offsets[0], STACK + STACK_SIZE).reason == "return"
            uc.mem_write(DATA, blank)
            for reg, value in ((UX.UC_X86_REG_RBX, DATA), (UX.UC_X86_REG_R8, a), (UX.UC_X86_REG_R9, b)):
                uc.reg_write(reg, value)
            uc.reg_write(UX.UC_X86_REG_RSP, STACK + STACK_SIZE - 8)
            uc.mem_write(STACK + STACK_SIZE - 8, RET.to_bytes(8, "little"))
            uc.emu_start(CODE + offsets[0], RET)
            mine, theirs = cpu.memory.read(DATA, len(compared)), bytes(uc.mem_read(DATA, len(compared)))
            for i, defined in enumerate(compared):
                producer, cc = producers[i // 32], list(CONDITIONS)[i % 32 // 2]
                assert not defined or mine[i] == theirs[i], f"{producer} {cc} on {a:#x}, {b:#x} (slot {i})"
            assert any(mine), "some condition holds"


# -- self-modifying code and run-time patching ---------------------------------------------------

SMC_CASES = {
    # Overwrite instructions later in the same trace.
    "same_block": """
        xorl %eax, %eax
        movw $0x9090, 1f(%rip)
        1: incl %eax
        incl %eax
    """,
    # Patch the body of a loop that is already translated as a loop, from inside it.
    "loop_body": """
        xorl %eax, %eax
        movl $10, %ecx
        2: addl $1, %eax
        cmpl $5, %ecx
        jne 3f
        movb $3, 2b+2(%rip)
        3: decl %ecx
        jnz 2b
    """,
    # Turn an indirect pv call site (ff 14 25 abs32) into a direct call plus nop padding.
    "patch_call_site": """
        leaq indirect(%rip), %rax
        movq %rax, slot(%rip)
        xorl %eax, %eax
        movl $3, %ecx
        5: call *slot
        decl %ecx
        jnz 6f
        jmp 7f
        6: leaq 5b(%rip), %rdx
        leaq direct(%rip), %rsi
        subq %rdx, %rsi
        subq $5, %rsi
        movb $0xe8, (%rdx)
        movl %esi, 1(%rdx)
        movw $0x9066, 5(%rdx)
        jmp 5b
        indirect: addl $1, %eax; ret
        direct: addl $100, %eax; ret
        .p2align 3
        slot: .quad 0
        7:
    """,
}


@pytest.mark.parametrize("name", sorted(SMC_CASES))
def test_self_modifying_code_matches_unicorn(name: str, tmp_path: Path) -> None:
    text = SMC_CASES[name].replace("call *slot", "call *(0xffffffff81000000 + slot - snippet_0)")
    code, offsets = assemble([text], tmp_path)
    setup = Setup([(CODE, 0x2000, "rwx", code)], CODE + offsets[0], {}, 0x2, compare=[(CODE, 0x2000)])
    cpu = assert_same(setup, label=name)
    assert cpu.reg("rax") == {"same_block": 1, "loop_body": 18, "patch_call_site": 201}[name]
    assert cpu.translator.retired_total, "the patched translation was dropped and counted"


def test_host_patching_drops_translations_like_unicorn_cache_removal(tmp_path: Path) -> None:
    """A patcher writes a site between runs; unicorn needs ctl_remove_cache, the model invalidates."""
    code, offsets = assemble(["xorl %eax, %eax\n1: addl $1, %eax\naddl $2, %eax"], tmp_path)
    entry = CODE + offsets[0]
    cpu = Cpu()
    cpu.memory.map(CODE, 0x1000, "rx", code)
    cpu.memory.map(STACK, STACK_SIZE, "rw")
    assert cpu.run(entry, STACK + STACK_SIZE).rax == 3
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
    uc.mem_map(CODE, 0x1000)
    uc.mem_write(CODE, code)
    uc.mem_map(STACK, STACK_SIZE)
    uc.mem_map(RET, 0x1000)
    uc.mem_write(RET, b"\xf4")

    def run_uc() -> int:
        uc.reg_write(UX.UC_X86_REG_RSP, STACK + STACK_SIZE - 8)
        uc.mem_write(STACK + STACK_SIZE - 8, RET.to_bytes(8, "little"))
        uc.emu_start(entry, RET)
        return uc.reg_read(UX.UC_X86_REG_RAX)

    assert run_uc() == 3
    patch = bytes.fromhex("83c00a")  # addl $10, %eax over addl $1, %eax
    offset = offsets[0] + 2
    assert code[offset : offset + 3] == bytes.fromhex("83c001")
    assert cpu.memory.write(entry + 2, patch), "the write must drop the translated block"
    uc.mem_write(entry + 2, patch)
    uc.ctl_remove_cache(CODE, CODE + 0x1000)
    assert cpu.run(entry, STACK + STACK_SIZE).rax == run_uc() == 12


# -- random instruction sequences --------------------------------------------------------------

DATA_REGS = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14")
_LEGACY = {"rax": "a", "rcx": "c", "rdx": "d", "rsi": "si", "rdi": "di"}


def sized(reg: str, bits: int) -> str:
    if reg.startswith("r") and reg[1:].isdigit():
        return reg + {64: "", 32: "d", 16: "w", 8: "b"}[bits]
    stem = _LEGACY[reg]
    if bits == 64:
        return reg
    if len(stem) == 2:
        return {32: "e" + stem, 16: stem, 8: stem + "l"}[bits]
    return {32: f"e{stem}x", 16: f"{stem}x", 8: f"{stem}l"}[bits]


SUFFIX = {8: "b", 16: "w", 32: "l", 64: "q"}
CONDITIONS = {
    "o": OF, "no": OF, "b": CF, "ae": CF, "e": ZF, "ne": ZF, "be": CF | ZF, "a": CF | ZF,
    "s": SF, "ns": SF, "p": PF, "np": PF, "l": SF | OF, "ge": SF | OF, "le": ZF | SF | OF, "g": ZF | SF | OF,
}  # fmt: skip


@attrs.frozen
class Op:
    """One generated instruction (or a small compound) and its effect on flag definedness."""

    text: str
    reads: int = 0
    defines: int = 0
    undefines: int = 0


class Grammar:
    """Draws instructions from the modelled subset, tracking which flags are undefined."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        self.draw = draw
        self.labels = 0

    def label(self) -> str:
        self.labels += 1
        return f"L{self.labels}"

    def pick(self, items: Any) -> Any:
        return self.draw(st.sampled_from(list(items)))

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.one_of(st.integers(max(lo, -3), min(hi, 3)), st.integers(lo, hi)))

    def reg(self, bits: int, avoid: frozenset[str] = frozenset()) -> str:
        return "%" + sized(self.pick(r for r in DATA_REGS if r not in avoid), bits)

    def mem(self) -> str:
        form = self.pick(("rbx", "rbp", "index", "gs"))
        if form == "index":
            return f"{self.integer(-0x200, 0x100)}(%rbx,%r15,{self.pick((1, 2, 4, 8))})"
        if form == "gs":
            return f"%gs:{self.integer(0, 0x7F0)}"
        return f"{self.integer(-0x400, 0x3F0)}(%{form})"

    def imm(self, bits: int) -> int:
        if bits == 8:
            return self.integer(-128, 255)
        if bits == 16:
            return self.integer(-32768, 65535)
        return self.integer(-(1 << 31), (1 << 31) - 1)

    def rm(self, bits: int, avoid: frozenset[str]) -> str:
        return self.mem() if self.draw(st.booleans()) else self.reg(bits, avoid)

    def sequence(self, count: int, undefined: int, avoid: frozenset[str], depth: int) -> tuple[list[str], int]:
        lines = []
        for _ in range(count):
            op = self.op(undefined, avoid, depth)
            lines.append(op.text)
            undefined = (undefined & ~op.defines) | op.undefines
        return lines, undefined

    def op(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        kinds = [
            "alu",
            "alu",
            "unary",
            "shift",
            "double",
            "mul",
            "div",
            "mov",
            "mov",
            "movx",
            "lea",
            "xchg",
            "atomic",
            "bits",
            "scan",
            "convert",
            "flag",
            "nop",
            "stack",
            "cmov",
            "setcc",
            "high",
            "string",
        ]
        if depth < 2:
            kinds += ["jcc", "loop", "call"]
        kind = self.pick(kinds)
        op = getattr(self, f"_{kind}")(undefined, avoid, depth)
        if op.reads & undefined:
            return Op("nop")
        return op

    def _alu(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        name = self.pick(("add", "sub", "adc", "sbb", "and", "or", "xor", "cmp", "test"))
        bits = self.pick((8, 16, 32, 64))
        s = SUFFIX[bits]
        dst = self.rm(bits, avoid)
        if dst.startswith("%") and not dst.startswith("%gs"):
            src = self.pick((self.reg(bits), self.mem(), f"${self.imm(bits)}"))
        else:
            src = self.pick((self.reg(bits), f"${self.imm(bits)}"))
        if name == "test" and src.startswith(("%gs", "-", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")):
            src, dst = dst, src
            if not dst.startswith("%") or dst.startswith("%gs"):
                dst = self.reg(bits, avoid)
        lock = "lock " if name not in ("cmp", "test") and "(" in dst and self.draw(st.booleans()) else ""
        logic = name in ("and", "or", "xor", "test")
        return Op(
            f"{lock}{name}{s} {src}, {dst}",
            reads=CF if name in ("adc", "sbb") else 0,
            defines=ARITH & ~AF if logic else ARITH,
            undefines=AF if logic else 0,
        )

    def _unary(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        name = self.pick(("inc", "dec", "neg", "not"))
        bits = self.pick((8, 16, 32, 64))
        dst = self.rm(bits, avoid)
        # unicorn 2.1.4 computes the flags of `lock neg` from the wrong operand; the model
        # follows the SDM (and plain `neg`), so that one combination is not generated.
        memory = "(" in dst or "%gs" in dst
        lock = "lock " if memory and name != "neg" and self.draw(st.booleans()) else ""
        defines = {"inc": ARITH & ~CF, "dec": ARITH & ~CF, "neg": ARITH, "not": 0}[name]
        return Op(f"{lock}{name}{SUFFIX[bits]} {dst}", defines=defines)

    def _shift(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        name = self.pick(("shl", "shr", "sar", "rol", "ror", "rcl", "rcr"))
        bits = self.pick((8, 16, 32, 64))
        dst = self.rm(bits, avoid | {"rcx"})
        reads = CF if name in ("rcl", "rcr") else 0
        if self.draw(st.booleans()):
            small = bits in (8, 16)
            undefines = OF | (CF if small else 0)
            if name in ("shl", "shr", "sar"):
                undefines |= AF
            return Op(f"{name}{SUFFIX[bits]} %cl, {dst}", reads=reads, undefines=undefines)
        if name in ("shl", "shr", "sar"):
            count = self.integer(0, 31 if bits <= 32 else 63)
        else:
            count = self.integer(1, bits - 1)
        if count == 0:
            return Op(f"{name}{SUFFIX[bits]} $0, {dst}")
        if name in ("shl", "shr", "sar"):
            defines = PF | ZF | SF | (CF if count <= bits else 0) | (OF if count == 1 else 0)
            undefines = AF | (0 if count == 1 else OF) | (0 if count <= bits else CF)
        else:
            defines = CF | (OF if count == 1 else 0)
            undefines = 0 if count == 1 else OF
        return Op(f"{name}{SUFFIX[bits]} ${count}, {dst}", reads=reads, defines=defines, undefines=undefines)

    def _double(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        name = self.pick(("shld", "shrd"))
        bits = self.pick((16, 32, 64))
        dst = self.rm(bits, avoid | {"rcx"})
        src = self.reg(bits)
        if bits > 16 and self.draw(st.booleans()):
            return Op(f"{name}{SUFFIX[bits]} %cl, {src}, {dst}", undefines=OF | AF)
        count = self.integer(1, bits - 1)
        defines = CF | PF | ZF | SF | (OF if count == 1 else 0)
        return Op(
            f"{name}{SUFFIX[bits]} ${count}, {src}, {dst}", defines=defines, undefines=AF | (OF if count > 1 else 0)
        )

    def _mul(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        bits = self.pick((8, 16, 32, 64))
        flags = {"defines": CF | OF, "undefines": SF | ZF | AF | PF}
        form = self.pick(("one", "two", "three"))
        if form == "one" or bits == 8:
            if avoid & {"rax", "rdx"}:
                return Op("nop")
            return Op(f"{self.pick(('mul', 'imul'))}{SUFFIX[bits]} {self.rm(bits, avoid)}", **flags)
        if form == "two":
            return Op(f"imul{SUFFIX[bits]} {self.rm(bits, frozenset())}, {self.reg(bits, avoid)}", **flags)
        return Op(
            f"imul{SUFFIX[bits]} ${self.imm(bits)}, {self.rm(bits, frozenset())}, {self.reg(bits, avoid)}", **flags
        )

    def _div(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        if avoid & {"rax", "rdx"}:
            return Op("nop")
        bits = self.pick((8, 16, 32, 64))
        s = SUFFIX[bits]
        divisor = self.reg(bits, avoid | {"rax", "rdx"})
        if self.draw(st.booleans()):
            setup = "movzbw %al, %ax" if bits == 8 else f"xor{s} {'%' + sized('rdx', bits)}, {'%' + sized('rdx', bits)}"
            name = "div"
        else:
            setup = {8: "cbtw", 16: "cwtd", 32: "cltd", 64: "cqto"}[bits]
            name = "idiv"
        return Op(f"{setup}; or{s} $1, {divisor}; {name}{s} {divisor}", undefines=ARITH)

    def _mov(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        bits = self.pick((8, 16, 32, 64))
        s = SUFFIX[bits]
        form = self.pick(("rr", "ir", "mr", "rm", "im", "abs"))
        if form == "rr":
            return Op(f"mov{s} {self.reg(bits)}, {self.reg(bits, avoid)}")
        if form == "ir":
            return Op(f"mov{s} ${self.imm(bits)}, {self.reg(bits, avoid)}")
        if form == "mr":
            return Op(f"mov{s} {self.mem()}, {self.reg(bits, avoid)}")
        if form == "rm":
            return Op(f"mov{s} {self.reg(bits)}, {self.mem()}")
        if form == "im":
            return Op(f"mov{s} ${self.imm(bits)}, {self.mem()}")
        return Op(f"movabs ${self.draw(st.integers(0, M64))}, {self.reg(64, avoid)}")

    def _movx(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        name, src_bits, dst_bits = self.pick(
            [("movzbw", 8, 16), ("movzbl", 8, 32), ("movzbq", 8, 64), ("movzwl", 16, 32), ("movzwq", 16, 64),
             ("movsbw", 8, 16), ("movsbl", 8, 32), ("movsbq", 8, 64), ("movswl", 16, 32), ("movswq", 16, 64),
             ("movslq", 32, 64)]
        )  # fmt: skip
        return Op(f"{name} {self.rm(src_bits, frozenset())}, {self.reg(dst_bits, avoid)}")

    def _lea(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        bits = self.pick((16, 32, 64))
        base, index = self.reg(64), self.reg(64)
        form = self.pick((f"{self.imm(32)}({base})", f"{self.imm(8)}({base},{index},{self.pick((1, 2, 4, 8))})",
                          f"(,{index},{self.pick((2, 4, 8))})", f"{self.imm(32)}({base},{index})"))  # fmt: skip
        return Op(f"lea{SUFFIX[bits]} {form}, {self.reg(bits, avoid)}")

    def _xchg(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        bits = self.pick((8, 16, 32, 64))
        if self.draw(st.booleans()):
            return Op(f"xchg{SUFFIX[bits]} {self.reg(bits, avoid)}, {self.reg(bits, avoid)}")
        return Op(f"xchg{SUFFIX[bits]} {self.reg(bits, avoid)}, {self.mem()}")

    def _atomic(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        bits = self.pick((8, 16, 32, 64))
        # unicorn 2.1.4 (QEMU) zero-extends RAX when a 32-bit cmpxchg succeeds; the SDM and
        # hardware leave RAX alone (test_cmpxchg32_keeps_rax_on_success pins the model).
        cmpxchg_bits = 64 if bits == 32 else bits
        s = SUFFIX[bits]
        lock = self.pick(("", "lock "))
        if self.draw(st.booleans()):
            if "rax" in avoid:
                return Op("nop")
            if bits == 64 and self.draw(st.booleans()):
                return Op(f"cmpxchgq {self.reg(64)}, {self.reg(64, avoid)}", defines=ARITH)
            s = SUFFIX[cmpxchg_bits]
            return Op(f"{lock}cmpxchg{s} {self.reg(cmpxchg_bits)}, {self.mem()}", defines=ARITH)
        if self.draw(st.booleans()):
            return Op(f"{lock}xadd{s} {self.reg(bits, avoid)}, {self.mem()}", defines=ARITH)
        return Op(f"xadd{s} {self.reg(bits, avoid)}, {self.reg(bits, avoid)}", defines=ARITH)

    def _bits(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        name = self.pick(("bt", "bts", "btr", "btc"))
        bits = self.pick((16, 32, 64))
        s = SUFFIX[bits]
        dst = self.rm(bits, avoid) if name != "bt" else self.rm(bits, frozenset())
        if dst.startswith("%") and not dst.startswith("%gs") and self.draw(st.booleans()):
            src = self.reg(bits)
        else:
            src = f"${self.integer(0, 255)}"
        return Op(f"{name}{s} {src}, {dst}", defines=CF, undefines=OF | SF | AF | PF)

    def _scan(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        bits = self.pick((16, 32, 64))
        s = SUFFIX[bits]
        src = self.reg(bits, avoid)
        bit = self.integer(0, bits - 1)
        name = self.pick(("bsf", "bsr"))
        return Op(f"bts{s} ${bit}, {src}; {name}{s} {src}, {self.reg(bits, avoid)}", defines=ZF,
                  undefines=CF | OF | SF | AF | PF)  # fmt: skip

    def _convert(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        if avoid & {"rax", "rdx"}:
            return Op("nop")
        return Op(self.pick(("cbtw", "cwtl", "cltq", "cwtd", "cltd", "cqto", f"bswap {self.reg(32, avoid)}",
                             f"bswap {self.reg(64, avoid)}")))  # fmt: skip

    def _flag(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        choice = self.pick(("clc", "stc", "cmc", "lahf", "sahf", "pushf", "popf", "cli", "sti"))
        if choice in ("clc", "stc"):
            return Op(choice, defines=CF)
        if choice == "cmc":
            return Op(choice, reads=CF, defines=CF)
        if choice in ("lahf", "sahf"):
            if "rax" in avoid:
                return Op("nop")
            if choice == "lahf":
                return Op("lahf", reads=CF | PF | AF | ZF | SF)
            return Op("sahf", defines=CF | PF | AF | ZF | SF)
        if choice == "pushf":
            return Op(f"pushfq; popq {self.reg(64, avoid)}", reads=ARITH)
        if choice == "popf":
            tmp = self.reg(64, avoid)
            return Op(f"movq {self.reg(64)}, {tmp}; andq $0xed5, {tmp}; pushq {tmp}; popfq", defines=ARITH)
        return Op(choice)

    def _nop(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        return Op(self.pick(("nop", "nopl (%rax)", "nopw 0(%rax,%rax,1)", "endbr64", "pause", "xchg %ax, %ax",
                             ".byte 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00")))  # fmt: skip

    def _stack(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        push = self.pick((self.reg(64), f"${self.imm(32)}", "q " + self.mem()))
        push = f"pushq {push[2:]}" if push.startswith("q ") else f"pushq {push}"
        inner = self.op(undefined, avoid, 2) if depth < 2 else Op("nop")
        pop = self.pick((self.reg(64, avoid), self.mem()))
        return Op(f"{push}; {inner.text}; popq {pop}", inner.reads, inner.defines, inner.undefines)

    def _cmov(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        allowed = [c for c in CONDITIONS if not CONDITIONS[c] & undefined]
        if not allowed:
            return Op("nop")
        cc = self.pick(allowed)
        bits = self.pick((16, 32, 64))
        return Op(f"cmov{cc}{SUFFIX[bits]} {self.rm(bits, frozenset())}, {self.reg(bits, avoid)}", reads=CONDITIONS[cc])

    def _setcc(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        allowed = [c for c in CONDITIONS if not CONDITIONS[c] & undefined]
        if not allowed:
            return Op("nop")
        cc = self.pick(allowed)
        return Op(f"set{cc} {self.rm(8, avoid)}", reads=CONDITIONS[cc])

    def _high(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        writable = [r for r in ("%al", "%cl", "%dl", "%ah", "%ch", "%dh") if sized(_HIGH_BASE[r], 64) not in avoid]
        if not writable:
            return Op("nop")
        name = self.pick(("mov", "add", "sub", "xor", "cmp", "adc"))
        src = self.pick(("%al", "%cl", "%dl", "%ah", "%ch", "%dh", "%bh", "%bl"))
        dst = self.pick(writable)
        logic = name == "xor"
        defines = 0 if name == "mov" else ARITH & ~AF if logic else ARITH
        return Op(f"{name}b {src}, {dst}", reads=CF if name == "adc" else 0, defines=defines,
                  undefines=AF if logic else 0)  # fmt: skip

    def _string(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        if avoid & {"rax", "rcx", "rsi", "rdi"}:
            return Op("nop")
        op = self.pick(("movs", "stos", "lods", "cmps", "scas"))
        width = self.pick("bwlq")
        count = self.integer(0, 24)
        prefix = self.pick(("", "rep ")) if op in ("movs", "stos", "lods") else self.pick(("", "repe ", "repne "))
        backward = self.draw(st.booleans())
        src, dst = self.integer(-0x300, 0x200), self.integer(-0x300, 0x200)
        text = f"leaq {src}(%rbx), %rsi; leaq {dst}(%rbx), %rdi; movl ${count}, %ecx; "
        text += ("std; " if backward else "") + f"{prefix}{op}{width}" + ("; cld" if backward else "")
        compares = op in ("cmps", "scas")
        defines = ARITH if compares and (not prefix or count) else 0
        return Op(text, defines=defines)

    def _jcc(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        allowed = [c for c in CONDITIONS if not CONDITIONS[c] & undefined]
        if not allowed:
            return Op("nop")
        cc = self.pick(allowed)
        label = self.label()
        inner, after = self.sequence(self.draw(st.integers(1, 3)), undefined, avoid, depth + 1)
        return Op(f"j{cc} {label}; {'; '.join(inner)}; {label}:", reads=CONDITIONS[cc], undefines=after & ~undefined)

    def _loop(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        if "rcx" in avoid:
            return Op("nop")
        label = self.label()
        count = self.integer(1, 6)
        inner, after = self.sequence(self.draw(st.integers(1, 4)), undefined, avoid | {"rcx"}, depth + 1)
        step = self.pick(("decl %ecx", "subl $1, %ecx", "addq $-1, %rcx"))
        text = f"movl ${count}, %ecx; {label}: {'; '.join(inner)}; {step}; jnz {label}"
        defines = ARITH & ~CF if step.startswith("dec") else ARITH
        return Op(text, defines=defines, undefines=(after | undefined) & ~defines)

    def _call(self, undefined: int, avoid: frozenset[str], depth: int) -> Op:
        callee, after_label = self.label(), self.label()
        inner, after = self.sequence(self.draw(st.integers(1, 3)), undefined, avoid, depth + 1)
        text = f"call {callee}; jmp {after_label}; {callee}: {'; '.join(inner)}; ret; {after_label}:"
        return Op(text, undefines=after & ~undefined, defines=0)


_HIGH_BASE = {"%al": "rax", "%ah": "rax", "%cl": "rcx", "%ch": "rcx", "%dl": "rdx", "%dh": "rdx"}


@st.composite
def programs(draw: Callable[[Any], Any]) -> tuple[list[tuple[str, int]], int]:
    """A batch of random snippets (text, flags undefined at the end) and a state seed."""
    grammar = Grammar(draw)
    batch = []
    for _ in range(draw(st.integers(1, 6))):
        undefined = draw(st.sampled_from((0, 0, ARITH)))
        lines, undefined = grammar.sequence(draw(st.integers(1, 14)), undefined, frozenset(), 0)
        batch.append(("\n".join(lines), undefined))
    return batch, draw(st.integers(0, 2**32))


def random_state(seed: int) -> tuple[dict[str, int], int, bytes]:
    rng = random.Random(seed)
    regs = {}
    for name in DATA_REGS:
        regs[name] = rng.choice((rng.getrandbits(64), rng.getrandbits(8), rng.getrandbits(32), M64, 1 << 63, 0))
    regs.update(rbx=DATA + 0x800, rbp=DATA + 0x1000, r15=rng.randrange(32))
    rflags = 0x2 | (rng.getrandbits(12) & ARITH) | rng.choice((0, 0x200))
    return regs, rflags, rng.randbytes(DATA_SIZE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_random_sequences_match_unicorn(tmp_path_factory: pytest.TempPathFactory, case: Any) -> None:
    batch, seed = case
    workdir = tmp_path_factory.mktemp("random")
    code, offsets = assemble([text for text, _ in batch], workdir)
    regs, rflags, data = random_state(seed)
    for (text, undefined), offset in zip(batch, offsets, strict=True):
        setup = Setup(
            [(CODE, 0x4000, "rwx", code), (DATA, DATA_SIZE, "rw", data)],
            CODE + offset,
            regs,
            rflags,
            gs_base=DATA,
            compare=[(DATA, DATA_SIZE), (STACK, STACK_SIZE)],
        )
        assert_same(setup, undefined, label=text, faults=(0,))


# -- faults ----------------------------------------------------------------------------------------


def machine(code: bytes, cpl: int = 0) -> Cpu:
    cpu = Cpu()
    cpu.memory.map(CODE, 0x1000, "rx", code)
    cpu.memory.map(DATA, 0x1000, "rw")
    cpu.memory.map(DATA + 0x1000, 0x1000, "r")
    cpu.memory.map(STACK, STACK_SIZE, "rw")
    cpu.cpl = cpl
    return cpu


def asm(text: str, workdir: Path) -> bytes:
    code, offsets = assemble([text], workdir)
    assert offsets == [0]
    return code


def test_unmodelled_instruction_is_ud(tmp_path: Path) -> None:
    cpu = machine(asm("movl $1, %eax\naddps %xmm0, %xmm1", tmp_path))
    with pytest.raises(InvalidOpcode) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    assert info.value.vector == 6 and info.value.rip == CODE + 5
    assert cpu.reg("rax") == 1, "state is precise: the mov before the fault retired"


def test_undecodable_bytes_are_ud() -> None:
    cpu = machine(bytes.fromhex("0fff"))
    with pytest.raises(InvalidOpcode) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    assert info.value.rip == CODE


def test_cli_at_cpl3_is_gp_with_the_instruction(tmp_path: Path) -> None:
    cpu = machine(asm("movl $7, %ecx\ncli", tmp_path), cpl=3)
    with pytest.raises(GeneralProtection) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    fault = info.value
    assert (fault.vector, fault.error_code, fault.rip) == (13, 0, CODE + 5)
    assert fault.insn is not None and fault.insn.kind == "cli"
    assert cpu.reg("rcx") == 7


def test_privileged_instructions_gp_at_cpl3(tmp_path: Path) -> None:
    for text in ("movq %cr3, %rax", "wrmsr", "hlt", "swapgs", "invlpg (%rax)", "wbinvd", "lgdt (%rax)", "clts"):
        cpu = machine(asm(text, tmp_path), cpl=3)
        with pytest.raises(GeneralProtection):
            cpu.run(CODE, STACK + STACK_SIZE)


def test_popf_at_cpl3_leaves_if_and_iopl(tmp_path: Path) -> None:
    # IF=1 and IOPL=0 on entry; the popped image clears IF, sets IOPL=3 and CF.
    cpu = machine(asm("pushq $0x3001\npopfq\npushfq\npopq %rax", tmp_path), cpl=3)
    cpu.rflags = 0x202
    result = cpu.run(CODE, STACK + STACK_SIZE)
    assert result.rax & 0x200, "IF unchanged at CPL 3 > IOPL"
    assert result.rax & 0x3000 == 0, "IOPL unchanged above CPL 0"
    assert result.rax & 1, "the arithmetic flags are loaded"
    cpu0 = machine(asm("pushq $0x3001\npopfq\npushfq\npopq %rax", tmp_path), cpl=0)
    cpu0.rflags = 0x202
    assert cpu0.run(CODE, STACK + STACK_SIZE).rax == 0x3003


def test_page_fault_reports_address_and_error_code(tmp_path: Path) -> None:
    missing = DATA + 0x5008
    cpu = machine(asm(f"movq $1, %rcx\nmovabs ${missing}, %rax\nmovq (%rax), %rdx", tmp_path))
    with pytest.raises(PageFault) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    assert info.value.address == missing and info.value.error_code == 0
    assert cpu.cr2 == missing and cpu.rip == CODE + 17
    readonly = DATA + 0x1010
    cpu = machine(asm(f"movabs ${readonly}, %rax\nmovq %rax, (%rax)", tmp_path), cpl=3)
    with pytest.raises(PageFault) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    assert info.value.address == readonly
    assert info.value.error_code == 0b111, "present, write, user"


def test_fetch_from_non_executable_memory_faults() -> None:
    cpu = machine(b"\xc3")
    with pytest.raises(PageFault) as info:
        cpu.run(DATA, STACK + STACK_SIZE)
    assert info.value.error_code & 0x10 and info.value.address == DATA


def test_divide_errors(tmp_path: Path) -> None:
    cpu = machine(asm("movl $5, %eax\nxorl %edx, %edx\nxorl %ecx, %ecx\ndivl %ecx", tmp_path))
    with pytest.raises(DivideError) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    assert info.value.vector == 0 and info.value.rip == CODE + 9
    cpu = machine(asm("movabs $0x8000000000000000, %rax\ncqto\nmovq $-1, %rcx\nidivq %rcx", tmp_path))
    with pytest.raises(DivideError):
        cpu.run(CODE, STACK + STACK_SIZE)


def test_software_interrupts_and_ud2(tmp_path: Path) -> None:
    cpu = machine(asm("int $0x80", tmp_path))
    with pytest.raises(SoftwareInterrupt) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    assert info.value.vector == 0x80 and info.value.rip == CODE + 2
    with pytest.raises(Breakpoint):
        machine(b"\xcc").run(CODE, STACK + STACK_SIZE)
    with pytest.raises(InvalidOpcode):
        machine(bytes.fromhex("0f0b")).run(CODE, STACK + STACK_SIZE)
    with pytest.raises(InvalidOpcode):
        machine(bytes.fromhex("0f01c1")).run(CODE, STACK + STACK_SIZE)  # vmcall on bare metal


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=24))
def test_any_bytes_give_a_result_or_an_arch_fault(code: bytes) -> None:
    cpu = machine(code + b"\xc3" * 8)
    cpu.memory.map(0x1000, 0x1000, "rw")
    for i in range(16):
        if i != 4:
            cpu.state[i] = DATA + 0x100 if i % 2 else 0x1008
    try:
        cpu.run(CODE, STACK + STACK_SIZE, 2000)
    except ArchFault:
        pass


# -- system instructions and the hypervisor hooks ----------------------------------------------------


def test_system_instructions_natively(tmp_path: Path) -> None:
    text = """
        movl $0xc0000101, %ecx; movl $0x82000000, %eax; movl $0xffffffff, %edx; wrmsr
        movq $0x42, %gs:8
        swapgs; rdmsr; shlq $32, %rdx; orq %rax, %rdx; movq %rdx, %r8; swapgs
        movq %gs:8, %r9
        movq %cr3, %rax; orq $0x1000, %rax; movq %rax, %cr3; movq %cr3, %r10
        movq %cr4, %r11; movq $5, %rax; movq %rax, %cr8; movq %cr8, %r12
        movq $0x100, %rax; movq %rax, %db7; movq %db7, %r13
        movl $0x1234, %eax; movw %ax, %gs; movw %gs, %r14w
        movq $0x55, %rax; ltr %ax; str %r15
        xorl %eax, %eax; cpuid
        clts; wbinvd; invlpg (%rsp)
        subq $16, %rsp; sidt (%rsp); addq $16, %rsp
        rdtsc
    """
    cpu = machine(asm(text, tmp_path))
    cpu.kernel_gs_base = 0x7777
    cpu.run(CODE, STACK + STACK_SIZE)
    assert cpu.gs_base == DATA and cpu.read_msr(0xC000_0101) == DATA
    assert cpu.reg("r8") == 0x7777 and cpu.reg("r9") == 0x42
    assert cpu.reg("r10") == 0x1000 and cpu.cr3 == 0x1000
    assert cpu.reg("r12") == 5 and cpu.reg("r13") == 0x100 and cpu.dr[7] == 0x100
    assert cpu.reg("r14") & 0xFFFF == 0x1234 and cpu.reg("r15") == 0x55
    assert cpu.reg("rbx") == 0x756E_6547, "GenuineIntel"
    assert cpu.invlpg_log[-1] == STACK + STACK_SIZE - 8


def test_syscall_sysret_and_iretq_change_privilege(tmp_path: Path) -> None:
    entry_text = """
        movq $0xffffffff81000800, %rax
        movl $0xc0000082, %ecx; movq %rax, %rdx; shrq $32, %rdx; wrmsr
        movl $0xc0000081, %ecx; xorl %eax, %eax; movl $0x00230010, %edx; wrmsr
        leaq user(%rip), %rcx; movl $0x2, %r11d
        sysretq
        user: movq $0x1111, %rbx; syscall
        .org 0x800
        movq %rcx, %r12; movq %r11, %r13
        pushq $0x2b; leaq 0xff0(%rsp), %rax; pushq %rax; pushq $0x202; pushq $0x33
        leaq back(%rip), %rax; pushq %rax
        iretq
        back: hlt
    """
    cpu = machine(asm(entry_text, tmp_path))
    cpu.memory.protect(CODE, 0x1000, "rx")
    with pytest.raises(GeneralProtection) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    # The iretq went to CPL 3 and the hlt there is privileged.
    assert cpu.cpl == 3 and info.value.insn is not None and info.value.insn.kind == "hlt"
    assert cpu.reg("rbx") == 0x1111 and cpu.reg("r13") == 0x2
    assert cpu.selectors[1] == 0x33 and cpu.rflags & 0x200


class HvmModel:
    """Trap-and-emulate: cpuid, hlt, vmcall and port I/O exit to the model."""

    intercepts = frozenset({"cpuid", "vmcall", "out", "in", "hlt"})

    def __init__(self) -> None:
        self.exits: list[str] = []
        self.ports: list[tuple[int, int]] = []

    def handle_exit(self, cpu: Cpu, insn: SensitiveInsn) -> None:
        self.exits.append(insn.kind)
        if insn.kind == "cpuid" and cpu.reg("rax") == 0x4000_0000:
            cpu.set_reg("rbx", 0x4B4D_564B)  # "KVMK"
        elif insn.kind == "cpuid":
            cpu.execute_native(insn)
            return
        elif insn.kind == "vmcall":
            cpu.set_reg("rax", cpu.reg("rbx") * 2)
        elif insn.kind == "out":
            self.ports.append((insn.port if insn.port is not None else cpu.reg("rdx") & 0xFFFF, cpu.reg("rax") & 0xFF))
        elif insn.kind == "in":
            cpu.set_reg("rax", 0x5A)
        elif insn.kind == "hlt":
            cpu.set_reg("r15", 1)
        cpu.rip = insn.next_rip

    def handle_fault(self, cpu: Cpu, fault: ArchFault) -> bool:
        return False


def test_exit_handler_intercepts_sensitive_instructions(tmp_path: Path) -> None:
    text = """
        movl $0x40000000, %eax; cpuid; movq %rbx, %r8
        movq $21, %rbx; vmcall; movq %rax, %r9
        movb $0x33, %al; outb %al, $0x80; movw $0x3f8, %dx; outb %al, %dx
        inb $0x60, %al; movq %rax, %r10
        hlt
        xorl %eax, %eax; cpuid; movq %rbx, %r11
    """
    cpu = machine(asm(text, tmp_path))
    model = HvmModel()
    cpu.exit_handler = model
    result = cpu.run(CODE, STACK + STACK_SIZE)
    assert result.reason == "return"
    assert cpu.reg("r8") == 0x4B4D_564B and cpu.reg("r9") == 42 and cpu.reg("r10") == 0x5A
    assert cpu.reg("r15") == 1 and cpu.reg("r11") == 0x756E_6547
    assert model.ports == [(0x80, 0x33), (0x3F8, 0x33)]
    assert model.exits == ["cpuid", "vmcall", "out", "out", "in", "hlt", "cpuid"]
    assert cpu.counts()["system"] == 7


class XenPvModel:
    """A deprivileged kernel: its cli/sti/popf and privileged instructions trap here as #GP."""

    intercepts = frozenset({"syscall"})

    def __init__(self) -> None:
        self.virtual_if = True
        self.emulated: list[str] = []
        self.hypercalls: list[int] = []

    def handle_exit(self, cpu: Cpu, insn: SensitiveInsn) -> None:
        self.hypercalls.append(cpu.reg("rax"))
        cpu.set_reg("rax", 0)
        cpu.rip = insn.next_rip

    def handle_fault(self, cpu: Cpu, fault: ArchFault) -> bool:
        if not isinstance(fault, GeneralProtection) or fault.insn is None:
            return False
        kind = fault.insn.kind
        self.emulated.append(kind)
        if kind in ("cli", "sti"):
            self.virtual_if = kind == "sti"
        elif kind == "mov_cr_read":
            reg = fault.insn.register
            assert reg is not None
            cpu.set_reg("rax" if reg.index == 0 else "rcx", 0xABC000)
        else:
            return False
        cpu.rip = fault.insn.next_rip
        return True


def test_xen_pv_style_kernel_at_cpl3(tmp_path: Path) -> None:
    text = """
        cli; movq %cr3, %rax; movl $29, %eax; syscall; sti
        movq %rax, %rbx; movq %cr3, %rcx; wbinvd
    """
    cpu = machine(asm(text, tmp_path), cpl=3)
    model = XenPvModel()
    cpu.exit_handler = model
    with pytest.raises(GeneralProtection) as info:
        cpu.run(CODE, STACK + STACK_SIZE)
    assert info.value.insn is not None and info.value.insn.kind == "wbinvd"
    assert model.emulated == ["cli", "mov_cr_read", "sti", "mov_cr_read", "wbinvd"]
    assert model.hypercalls == [29] and model.virtual_if
    assert cpu.reg("rcx") == 0xABC000 and cpu.cpl == 3


def test_cmpxchg32_keeps_rax_on_success(tmp_path: Path) -> None:
    """SDM: the accumulator is written only when the comparison fails (then zero-extended)."""
    text = """
        subq $16, %rsp
        movabs $0xaaaaaaaa00000005, %rax; movl $5, (%rsp); movl $9, %ecx; cmpxchgl %ecx, (%rsp)
        movq %rax, %r8; movl (%rsp), %r9d
        movabs $0xbbbbbbbb00000001, %rax; cmpxchgl %ecx, (%rsp); movq %rax, %r10
        addq $16, %rsp
    """
    cpu = machine(asm(text, tmp_path))
    cpu.run(CODE, STACK + STACK_SIZE)
    assert cpu.reg("r8") == 0xAAAA_AAAA_0000_0005 and cpu.reg("r9") == 9
    assert cpu.reg("r10") == 9, "failure loads the old value, zero-extended"


def test_instruction_classes_are_counted(tmp_path: Path) -> None:
    cpu = machine(asm("movl $10, %ecx\n1: addq (%rsp), %rax\nimulq %rcx, %rdx\ndecl %ecx\njnz 1b\ncli", tmp_path))
    result = cpu.run(CODE, STACK + STACK_SIZE)
    counts = cpu.counts()
    assert counts == {"alu": 11, "mem": 10, "branch": 11, "muldiv": 10, "string": 0, "system": 1}
    assert sum(counts.values()) == result.instructions == cpu.retired() == 43
    assert cpu.cycles({"alu": 1, "mem": 3, "branch": 2, "muldiv": 4, "system": 20}) == 11 + 30 + 22 + 40 + 20


def test_budget_stops_a_loop_and_resumes(tmp_path: Path) -> None:
    cpu = machine(asm("xorl %eax, %eax\n1: addq $1, %rax\njmp 1b", tmp_path))
    first = cpu.run(CODE, STACK + STACK_SIZE, 1000)
    assert first.reason == "limit" and 990 <= first.instructions <= 1000 + 64
    second = cpu.resume(500)
    assert second.reason == "limit" and second.rax == (first.instructions + second.instructions - 1) // 2


def iterate_blocks(cpu: Cpu) -> Iterator[str]:
    for block in cpu.translator.blocks:
        yield block.source


def test_a_hot_loop_runs_without_capstone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = machine(asm("xorl %eax, %eax\nmovl $1000, %ecx\n1: addq %rcx, %rax\ndecl %ecx\njnz 1b", tmp_path))
    cpu.run(CODE, STACK + STACK_SIZE)
    calls = []
    monkeypatch.setattr(cpu.translator.decoder, "decode", lambda *a: calls.append(a))
    assert cpu.run(CODE, STACK + STACK_SIZE).rax == 500500
    assert calls == [], "warm code is never decoded again"
    assert any("while True" in source for source in iterate_blocks(cpu))


def _spec_templates() -> list[tuple[str, str, bytes]]:
    """Every returning x86-64 template of the spec that runs at CPL 0 without a hypervisor."""
    from pvgen.generated import pvops_x86_64 as layer
    from pvgen.runtime.x86.boot import Padder

    padder = Padder.of(layer)
    found = {}
    for op in layer.OPS:
        if op.transfer != "call":
            continue
        for hypervisor, impl in sorted(op.impls.items()):
            if impl.template is not None and impl.template not in found.values():
                found[f"{op.group}.{op.name}/{hypervisor}"] = impl.template
                if impl.pad and f"{op.group}.{op.name}" not in _NOT_ON_UNICORN:
                    # The form a patched site takes: every pad prefix the template has room for.
                    room = sum(count for _, count in impl.pad)
                    padded = padder.pad([(impl.template, impl.pad)], len(impl.template) + room)
                    found[f"{op.group}.{op.name}/{hypervisor}/padded"] = padded
    return [(name, name.split("/")[0], code) for name, code in sorted(found.items())]


# hlt stops both machines; the others have no observable difference worth a unicorn setup
# (cache and TLB maintenance), or unicorn does not model them at CPL 0 in its default mode.
_NOT_ON_UNICORN = {"irq.safe_halt", "irq.halt", "cpu.wbinvd", "mmu.write_cr3", "cpu.io_delay"}


@pytest.mark.parametrize(("name", "op", "code"), _spec_templates(), ids=lambda v: v if isinstance(v, str) else "")
def test_spec_templates_match_unicorn(name: str, op: str, code: bytes) -> None:
    if op in _NOT_ON_UNICORN:
        pytest.skip(f"{op}: not comparable on unicorn (see _NOT_ON_UNICORN)")
    data = random.Random(name).randbytes(DATA_SIZE)
    regs = {reg: 0x0101_0101 * (i + 3) for i, reg in enumerate(REGS)}
    regs.update(rdi=DATA + 0x100, rsi=DATA + 0x200)
    if op == "irq.restore_fl":
        regs["rdi"] = 0x2D7  # flags with every arithmetic bit and IF, but not TF (single-step is not modelled)
    regs.pop("rsp")
    setup = Setup(
        [(CODE, 0x2000, "rwx", code + b"\xc3"), (DATA, DATA_SIZE, "rw", data)],
        CODE,
        regs,
        0x202,
        compare=[(DATA, DATA_SIZE), (STACK, STACK_SIZE)],
    )
    assert_same(setup, label=name)
