/*
 * A data-TLB-miss handler in the shape of Linux's ivt.S dtlb_miss, and a kernel loop that makes it
 * run: one source, assembled once per pv instance after cpp with
 * -include generated/asm/ia64/inst_<instance>.h (tests/test_ia64_runtime.py).
 *
 * _start (boot code, written as setup code is: native privileged moves, which Xen traps and
 * emulates, plus the pv macros around the translation-register insert) installs the IVT, the VHPT
 * (cr.pta, a region-5 region register through pv set_rr, a translation register for the VHPT's
 * own pages), puts the PTE of TEST_VA into the VHPT, enables interrupts through pv ssm_i and
 * loops `loop_count` times: purge TEST_VA's translation with pv ptcga, store to TEST_VA (a data
 * TLB miss: the handler inserts the translation), load it back, add.
 *
 * dtlb_miss reads ifa, isr and itir through the macros, computes the VHPT address with THASH,
 * loads the PTE, sets its dirty bit for a write (ISR.w), inserts it with ITC_D, then turns
 * interruption collection and (if the interrupted code had them) interrupts back on to update
 * a fault log, masks both again, restores IPSR/IIP and returns with RFI.
 */
#include "pv_stub.h"

#define VHPT_VA 0xa000000001000000	/* the region-5 view of the 1 MiB VHPT */
#define VHPT_PS 20
#define VHPT_PTE 0x01000461		/* ppn 16 MiB, ar RW, pl 0, d, a, p */
#define PTA_VALUE 0x01000051		/* base 16 MiB, size 2^20, ve */
#define RR5_VALUE 0x539			/* rid 5, 16 KiB pages, ve */
#define TEST_VA 0xa000000020000000
#define TEST_PTE 0x01800421		/* ppn 24 MiB, ar RW, pl 0, a, p; not dirty */
#define PAGE_PS 14

	.data
	.align 8
	.global pv_cpu_ops
pv_cpu_ops:
	.skip 14 * 8
	.global loop_count
loop_count:
	data8 3
	.global fault_log
fault_log:				/* count, last ifa, last isr, last itir.ps */
	.skip 4 * 8
	.global result
result:
	.skip 8
	.global context
context:				/* r8, r16, r19, r31, pr right after the faulting store */
	.skip 5 * 8

	.text
	.macro fatal offset
	.org \offset
	mov r30 = \offset
	;;
	br.cond.sptk.many pvgen_fatal
	;;
	.endm

/* The interruption vector table: 32 KiB, at the start of .text (32 KiB-aligned by the link). */
	.global ia64_ivt
ia64_ivt:
	fatal 0x0000
	fatal 0x0400

	.org 0x0800
	.global dtlb_miss
dtlb_miss:
	mov r31 = pr
	MOV_FROM_IFA(r16)
	;;
	MOV_FROM_ISR(r20)
	MOV_FROM_ITIR(r25)
	;;
	THASH(p0, r17, r16, r19)
	;;
	ld8 r18 = [r17]
	tbit.nz p6, p0 = r20, 33
	extr.u r26 = r25, 2, 6
	;;
	(p6) or r18 = 0x40, r18
	;;
	ITC_D(p0, r18, r19)
	;;
	MOV_FROM_IPSR(p0, r21)
	MOV_FROM_IIP(r22)
	;;
	tbit.nz p15, p0 = r21, 14
	SSM_PSR_IC_AND_SRLZ_D(r23, r24)
	;;
	SSM_PSR_I(p15, p14, r23)
	;;
	movl r27 = fault_log
	;;
	ld8 r28 = [r27]
	;;
	adds r28 = 1, r28
	;;
	st8 [r27] = r28, 8
	;;
	st8 [r27] = r16, 8
	;;
	st8 [r27] = r20, 8
	;;
	st8 [r27] = r26
	RSM_PSR_I_IC(r23, r24, r29)
	;;
	srlz.d
	;;
	MOV_TO_IPSR(p0, r21, r23)
	MOV_TO_IIP(r22, r23)
	;;
	mov pr = r31, -1
	;;
	RFI
	;;

	fatal 0x0c00
	fatal 0x1000
	fatal 0x1400
	fatal 0x1800
	fatal 0x1c00
	fatal 0x2000
	fatal 0x2400
	fatal 0x2800
	fatal 0x2c00
	fatal 0x3000
	fatal 0x5000
	fatal 0x5100
	fatal 0x5200
	fatal 0x5300
	fatal 0x5400
	fatal 0x5600
	fatal 0x5a00

	.org 0x8000
	.global pvgen_fatal
pvgen_fatal:
	br.cond.sptk.many pvgen_fatal
	;;

	.global _start
_start:
	movl r2 = ia64_ivt
	movl r3 = PTA_VALUE
	;;
	.global set_iva
set_iva:				/* the first privileged instruction */
	mov cr.iva = r2
	mov cr.pta = r3
	;;
	srlz.i
	;;
	/* region 5: ia64_set_rr(0xa000000000000000, RR5_VALUE) */
	movl r8 = 0xa000000000000000
	movl r9 = RR5_VALUE
	PV_CALL(PV_SET_RR, 7)
	/* pin the VHPT with a data translation register (ia64_itr) */
	RSM_PSR_IC(r2)
	;;
	srlz.d
	movl r14 = VHPT_VA
	mov r15 = VHPT_PS << 2
	;;
	MOV_TO_IFA(r14, r2)
	;;
	MOV_TO_ITIR(p0, r15, r2)
	;;
	movl r16 = VHPT_PTE
	mov r17 = 1
	;;
	itr.d dtr[r17] = r16
	;;
	SSM_PSR_IC_AND_SRLZ_D(r2, r3)
	;;
	/* the page table: the PTE of TEST_VA at its VHPT slot */
	movl r14 = TEST_VA
	;;
	THASH(p0, r15, r14, r16)
	;;
	movl r17 = TEST_PTE
	;;
	st8 [r15] = r17
	/* local_irq_enable() */
	PV_CALL(PV_SSM_I, 9)
	movl r2 = loop_count
	;;
	ld8 r40 = [r2]
	mov r41 = 1
	;;
.Lloop:
	/* ia64_ptcga(TEST_VA, PAGE_SHIFT << 2): the next store misses again */
	movl r8 = TEST_VA
	mov r9 = PAGE_PS << 2
	PV_CALL(PV_PTCGA, 5)
	/* interrupted-context sentinels: bank-1 registers the handler's bank 0 shadows, r8 the Xen
	 * macros borrow, and predicates the handler saves and restores */
	movl r14 = TEST_VA
	movl r8 = 0x0808080808080808
	movl r16 = 0x1616161616161616
	movl r19 = 0x1919191919191919
	movl r31 = 0x3131313131313131
	cmp.eq p14, p15 = r0, r0
	;;
	.global faulting_store
faulting_store:
	st8 [r14] = r41
	;;
	movl r2 = context
	mov r3 = pr
	;;
	st8 [r2] = r8, 8
	;;
	st8 [r2] = r16, 8
	;;
	st8 [r2] = r19, 8
	;;
	st8 [r2] = r31, 8
	;;
	st8 [r2] = r3
	ld8 r15 = [r14]
	;;
	add r41 = r41, r15
	adds r40 = -1, r40
	;;
	cmp.ne p6, p0 = r40, r0
	(p6) br.cond.sptk.few .Lloop
	;;
	movl r2 = result
	;;
	st8 [r2] = r41
	br.ret.sptk.many b0
	;;
