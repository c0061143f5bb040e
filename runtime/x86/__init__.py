"""The x86-64 CPU model of pvgen's runtime: runs generated kernel code on flat memory.

Machine code is decoded once with capstone, translated per trace into Python functions
and cached by address; writes to translated code drop the translations (patching is
self-modifying code). See docs/x86-cpu.md.
"""

from pvgen.runtime.x86.cpu import RETURN_SENTINEL, Cpu, ExitHandler, RunResult
from pvgen.runtime.x86.decode import Imm, Insn, Mem, Reg, SysReg
from pvgen.runtime.x86.faults import (
    ArchFault,
    Breakpoint,
    DivideError,
    GeneralProtection,
    InvalidOpcode,
    PageFault,
    SoftwareInterrupt,
)
from pvgen.runtime.x86.memory import AddressError, Memory, Region
from pvgen.runtime.x86.sensitive import INLINE, IOPL_SENSITIVE, KINDS, PRIVILEGED, SensitiveInsn
from pvgen.runtime.x86.translate import CLASSES

__all__ = [
    "CLASSES",
    "INLINE",
    "IOPL_SENSITIVE",
    "KINDS",
    "PRIVILEGED",
    "RETURN_SENTINEL",
    "AddressError",
    "ArchFault",
    "Breakpoint",
    "Cpu",
    "DivideError",
    "ExitHandler",
    "GeneralProtection",
    "Imm",
    "Insn",
    "InvalidOpcode",
    "Mem",
    "Memory",
    "PageFault",
    "Reg",
    "Region",
    "RunResult",
    "SensitiveInsn",
    "SoftwareInterrupt",
    "SysReg",
]
