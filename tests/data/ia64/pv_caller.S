/*
 * C-like kernel code calling pv_cpu_ops through the 5-bundle stub (what the compiled
 * paravirt_* inline wrappers emit), one call after another, each result stored in `results`.
 * Not paravirtualised asm: assembled once, the same bytes run under every hypervisor. The
 * runtime fills pv_cpu_ops with the hypervisor's implementations; run unpatched the stubs call
 * them through the function descriptors, run patched the sites hold the templates.
 *
 * It also calls through a branch-patch site (paravirt_leave_kernel, reference §4.4): unpatched
 * it goes through the slow path (paravirt_leave_kernel_targ), patched the slot-0 branch goes
 * straight to the instance's ia64_native_leave_kernel or xen_leave_kernel.
 */
#include "pv_stub.h"

#define IA64_PSR_I 0x4000
#define REG_AR_KR3 3075
#define REG_CR_TPR 4162
#define REG_PSR 1019
#define RR_VALUE(rid) (((rid) << 8) | (14 << 2))

	.data
	.align 8
	.global pv_cpu_ops
pv_cpu_ops:
	.skip 14 * 8
	.global paravirt_leave_kernel_targ
paravirt_leave_kernel_targ:
	data8 0
	.global results
results:
	.skip 32 * 8

	.text
	.global _start
_start:
	mov r33 = b0
	movl r32 = results
	movl r2 = 0x01000051		/* a VHPT for thash: base 16 MiB, 2^20, ve */
	;;
	mov cr.pta = r2
	;;
	/* flags = local_irq_save(): get_psr_i, then rsm_i */
	PV_CALL(PV_GET_PSR_I, 11)
	;;
	st8 [r32] = r8, 8		/* [0] psr.i at entry (0: the runtime boots with interrupts off) */
	PV_CALL(PV_RSM_I, 10)
	PV_CALL(PV_SSM_I, 9)
	PV_CALL(PV_GET_PSR_I, 11)
	;;
	st8 [r32] = r8, 8		/* [1] after ssm_i */
	mov r8 = 0
	PV_CALL(PV_INTRIN_LOCAL_IRQ_RESTORE, 12)
	PV_CALL(PV_GET_PSR_I, 11)
	;;
	st8 [r32] = r8, 8		/* [2] after local_irq_restore(0) */
	mov r8 = IA64_PSR_I
	PV_CALL(PV_INTRIN_LOCAL_IRQ_RESTORE, 12)
	PV_CALL(PV_GET_PSR_I, 11)
	;;
	st8 [r32] = r8, 8		/* [3] after local_irq_restore(IA64_PSR_I) */
	/* region 3: set_rr, get_rr */
	movl r8 = 0x6000000000000000
	mov r9 = RR_VALUE(0x33)
	PV_CALL(PV_SET_RR, 7)
	movl r8 = 0x6000000000000000
	PV_CALL(PV_GET_RR, 6)
	;;
	st8 [r32] = r8, 8		/* [4] rr[3] */
	movl r8 = 0x6000000000124000
	PV_CALL(PV_THASH, 2)
	;;
	st8 [r32] = r8, 8		/* [5] thash */
	/* setreg(_IA64_REG_AR_KR3, v), getreg(_IA64_REG_AR_KR3): r8 = value, r9 = id; r8 = id */
	movl r8 = 0x1234567890abcdef
	mov r9 = REG_AR_KR3
	PV_CALL(PV_SETREG, SETREG_TYPE(REG_AR_KR3))
	mov r8 = REG_AR_KR3
	PV_CALL(PV_GETREG, GETREG_TYPE(REG_AR_KR3))
	;;
	st8 [r32] = r8, 8		/* [6] ar.k3 */
	mov r8 = 0x20
	mov r9 = REG_CR_TPR
	PV_CALL(PV_SETREG, SETREG_TYPE(REG_CR_TPR))
	mov r8 = REG_CR_TPR
	PV_CALL(PV_GETREG, GETREG_TYPE(REG_CR_TPR))
	;;
	st8 [r32] = r8, 8		/* [7] cr.tpr */
	mov r8 = 3
	PV_CALL(PV_GET_CPUID, 3)
	;;
	st8 [r32] = r8, 8		/* [8] cpuid[3] */
	mov r8 = REG_PSR
	PV_CALL(PV_GETREG, GETREG_TYPE(REG_PSR))
	;;
	movl r2 = 0x100802603e	/* it, rt, dt, i, ic and the user mask: bits both instances define */
	;;
	and r8 = r2, r8
	;;
	st8 [r32] = r8, 8		/* [9] psr */
	/* set_rr0_to_rr4 with region 0 unchanged (the kernel's own mapping lives there) */
	mov r8 = RR_VALUE(0)
	mov r9 = RR_VALUE(0x101)
	mov r10 = RR_VALUE(0x202)
	mov r11 = RR_VALUE(0x303)
	mov r14 = RR_VALUE(0x404)
	PV_CALL(PV_SET_RR0_TO_RR4, 8)
	movl r8 = 0x8000000000000000
	PV_CALL(PV_GET_RR, 6)
	;;
	st8 [r32] = r8, 8		/* [10] rr[4] */
	movl r8 = results
	PV_CALL(PV_FC, 1)
	/* the asm entry paravirt_leave_kernel through its branch-patch site */
	br.call.sptk.many b0 = paravirt_leave_kernel
	;;
	st8 [r32] = r8, 8		/* [11] which leave_kernel ran */
	mov b0 = r33
	;;
	br.ret.sptk.many b0
	;;

	.global paravirt_leave_kernel
paravirt_leave_kernel:
	{ .bbb
	br.cond.sptk.many 1f
	nop.b 0
	nop.b 0
	;;
	}
	.xdata8 ".paravirt_branches", paravirt_leave_kernel, BR_START + 3
1:
	movl r22 = paravirt_leave_kernel_targ
	;;
	ld8 r22 = [r22]
	;;
	mov b7 = r22
	br.cond.sptk.many b7
	;;

	.global ia64_native_leave_kernel
ia64_native_leave_kernel:
	mov r8 = 0x11
	br.ret.sptk.many b0
	;;

	.global xen_leave_kernel
xen_leave_kernel:
	mov r8 = 0x22
	br.ret.sptk.many b0
	;;
