"""Register numbering and bit layouts of the IA-64 architectural state the model keeps.

PSR bit positions are the KREGS ones of the reference (§6.4); CR and AR numbers are the ones that
appear in the instructions' cr3/ar3 fields. Everything the CPU model, the translator and the
hypervisor models share about the state lives here, so the numbers exist once.
"""

from __future__ import annotations

from typing import Final

MASK64: Final = (1 << 64) - 1
SIGN64: Final = 1 << 63

# PSR bits.
PSR_BE: Final = 1 << 1
PSR_UP: Final = 1 << 2
PSR_AC: Final = 1 << 3
PSR_MFL: Final = 1 << 4
PSR_MFH: Final = 1 << 5
PSR_IC: Final = 1 << 13
PSR_I: Final = 1 << 14
PSR_PK: Final = 1 << 15
PSR_DT: Final = 1 << 17
PSR_DFL: Final = 1 << 18
PSR_DFH: Final = 1 << 19
PSR_SP: Final = 1 << 20
PSR_PP: Final = 1 << 21
PSR_DI: Final = 1 << 22
PSR_SI: Final = 1 << 23
PSR_DB: Final = 1 << 24
PSR_LP: Final = 1 << 25
PSR_TB: Final = 1 << 26
PSR_RT: Final = 1 << 27
PSR_CPL_SHIFT: Final = 32
PSR_CPL: Final = 3 << PSR_CPL_SHIFT
PSR_IS: Final = 1 << 34
PSR_MC: Final = 1 << 35
PSR_IT: Final = 1 << 36
PSR_ID: Final = 1 << 37
PSR_DA: Final = 1 << 38
PSR_DD: Final = 1 << 39
PSR_SS: Final = 1 << 40
PSR_RI_SHIFT: Final = 41
PSR_RI: Final = 3 << PSR_RI_SHIFT
PSR_ED: Final = 1 << 43
PSR_BN: Final = 1 << 44
PSR_IA: Final = 1 << 45

PSR_UM: Final = 0x3E  # user mask: be, up, ac, mfl, mfh (sum/rum, mov psr.um)
PSR_SM: Final = (1 << 24) - 1  # system mask (ssm/rsm)
PSR_L: Final = (1 << 32) - 1  # mov psr.l writes bits 31:0
#: What `mov r = psr` returns: bits 31:0 and 36:35 (mc, it), the rest read as 0.
PSR_READABLE: Final = PSR_L | PSR_MC | PSR_IT
#: Bits an interruption leaves alone (SDM Vol. 2 §5.5: everything else is cleared, be/pp come from DCR).
PSR_KEPT_ON_INTERRUPTION: Final = PSR_UP | PSR_MFL | PSR_MFH | PSR_PK | PSR_DT | PSR_RT | PSR_MC | PSR_IT
#: The kernel's running PSR used at boot (Linux IA64_PSR_KERNEL-like, interrupts off, bank 1).
PSR_KERNEL_BOOT: Final = PSR_IC | PSR_DT | PSR_RT | PSR_IT | PSR_BN

PSR_NAMES: Final[dict[str, int]] = {
    "be": PSR_BE,
    "up": PSR_UP,
    "ac": PSR_AC,
    "mfl": PSR_MFL,
    "mfh": PSR_MFH,
    "ic": PSR_IC,
    "i": PSR_I,
    "pk": PSR_PK,
    "dt": PSR_DT,
    "dfl": PSR_DFL,
    "dfh": PSR_DFH,
    "sp": PSR_SP,
    "pp": PSR_PP,
    "di": PSR_DI,
    "si": PSR_SI,
    "db": PSR_DB,
    "lp": PSR_LP,
    "tb": PSR_TB,
    "rt": PSR_RT,
    "is": PSR_IS,
    "mc": PSR_MC,
    "it": PSR_IT,
    "id": PSR_ID,
    "da": PSR_DA,
    "dd": PSR_DD,
    "ss": PSR_SS,
    "ed": PSR_ED,
    "bn": PSR_BN,
    "ia": PSR_IA,
}

# Control registers.
CR_DCR: Final = 0
CR_ITM: Final = 1
CR_IVA: Final = 2
CR_PTA: Final = 8
CR_IPSR: Final = 16
CR_ISR: Final = 17
CR_IIP: Final = 19
CR_IFA: Final = 20
CR_ITIR: Final = 21
CR_IIPA: Final = 22
CR_IFS: Final = 23
CR_IIM: Final = 24
CR_IHA: Final = 25
CR_LID: Final = 64
CR_IVR: Final = 65
CR_TPR: Final = 66
CR_EOI: Final = 67
CR_IRR0: Final = 68
CR_ITV: Final = 72
CR_PMV: Final = 73
CR_CMCV: Final = 74
CR_LRR0: Final = 80
CR_LRR1: Final = 81
#: Interruption control registers: readable and writable only with psr.ic = 0.
INTERRUPTION_CRS: Final = frozenset(range(16, 26))
IMPLEMENTED_CRS: Final = frozenset({0, 1, 2, 8, *range(16, 26), 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 80, 81})
READ_ONLY_CRS: Final = frozenset({CR_IVR, 68, 69, 70, 71})
WRITE_ONLY_CRS: Final = frozenset({CR_EOI})  # reads return 0

# Application registers.
AR_KR0: Final = 0
AR_RSC: Final = 16
AR_BSP: Final = 17
AR_BSPSTORE: Final = 18
AR_RNAT: Final = 19
AR_EFLAG: Final = 24
AR_CCV: Final = 32
AR_UNAT: Final = 36
AR_FPSR: Final = 40
AR_ITC: Final = 44
AR_PFS: Final = 64
AR_LC: Final = 65
AR_EC: Final = 66
#: ARs the translator reads and writes inline (no side effects, no privilege rules).
PLAIN_ARS: Final = frozenset({AR_CCV, AR_UNAT, AR_FPSR, AR_PFS, AR_LC, 25, 26, 27, 28, 29, 30, 21})

SPURIOUS_VECTOR: Final = 15
CFM_MASK: Final = (1 << 38) - 1
IFS_V: Final = 1 << 63

#: Itanium 2 (Madison) identification: cpuid[0..1] vendor, cpuid[3] version (number 4, revision 5,
#: model 1, family 0x1f), cpuid[4] features (lb: long branch implemented).
DEFAULT_CPUID: Final = (
    int.from_bytes(b"GenuineI", "little"),
    int.from_bytes(b"ntel\0\0\0\0", "little"),
    0,
    0x1F010504,
    0x1,
)


def sext(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value
