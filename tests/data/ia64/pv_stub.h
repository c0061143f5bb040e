/*
 * The pv_cpu_ops calling stub (reference §2.2) as the kernel's C wrappers emit it: five bundles,
 * arguments in r8-r11/r14, result in r8, return through b6, recorded in .paravirt_bundles
 * (start, end, patch type) so the boot-time patcher can replace it with the op's template.
 * PV_CALL(member, type): member is the op's position in struct pv_cpu_ops.
 */
#define PV_FC 0
#define PV_THASH 1
#define PV_GET_CPUID 2
#define PV_GET_PMD 3
#define PV_GETREG 4
#define PV_SETREG 5
#define PV_PTCGA 6
#define PV_GET_RR 7
#define PV_SET_RR 8
#define PV_SET_RR0_TO_RR4 9
#define PV_SSM_I 10
#define PV_RSM_I 11
#define PV_GET_PSR_I 12
#define PV_INTRIN_LOCAL_IRQ_RESTORE 13

	.section .paravirt_bundles, "a"
	.section .paravirt_branches, "a"
	.previous

#define GETREG_TYPE(reg) (0x10000000 + (reg))
#define SETREG_TYPE(reg) (0x20000000 + (reg))
#define BR_START 0x30000000

	.macro __pv_call member, type
	;;
998:
	{ .mlx
	nop.m 0
	movl r2 = pv_cpu_ops + \member * 8
	;;
	}
1:
	{ .mii
	ld8 r2 = [r2]
	mov r17 = ip
	mov r16 = gp
	;;
	}
	{ .mii
	ld8 r3 = [r2], 8
	adds r17 = 48, r17
	;;
	mov b7 = r3
	}
	{ .mib
	ld8 gp = [r2]
	mov b6 = r17
	br.cond.sptk.few b7
	}
	{ .mii
	mov gp = r16
	nop.i 0
	nop.i 0
	;;
	}
999:
	.xdata8 ".paravirt_bundles", 998b, 999b, \type
	.endm
#define PV_CALL(member, type) __pv_call member, type
