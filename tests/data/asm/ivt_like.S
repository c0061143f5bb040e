/*
 * An interruption-handler-like IA64 routine set, in the shape of Linux's ivt.S and
 * entry.S, that reaches every privileged operation through the pvgen macros. It is
 * assembled once per pv instance (tests/test_backend_asm.py): cpp with -DPVGEN_INSTANCE_*
 * selecting the header through inst.h, then ia64-linux-gnu-as -xnone.
 */
#include "inst.h"

/* The instance save-min bodies of minstate.h, reduced to their shape. */
#define IA64_NATIVE_DO_SAVE_MIN(__COVER, SAVE_IFS, EXTRA, WORKAROUND) \
	mov r16 = ar.k6;; __COVER;; SAVE_IFS;; EXTRA;; WORKAROUND;; bsw.1;;
#define XEN_DO_SAVE_MIN(__COVER, SAVE_IFS, EXTRA, WORKAROUND) \
	mov r16 = ar.k6;; movl r30 = 0xfffffffffff04c00;; ld8 r30 = [r30];; EXTRA;; WORKAROUND;; BSW_1(r3, r14);;
#define SAVE_MIN_WITH_COVER DO_SAVE_MIN(COVER, mov r30 = cr.ifs, , )
#define SAVE_MIN DO_SAVE_MIN(, mov r30 = r0, , )

	.text
	.align 32

/* VHPT translation miss: read the fault state, insert the translation, return. */
	.global vhpt_miss
vhpt_miss:
	MOV_FROM_IFA(r16)
	MOV_FROM_ITIR(r25)
	;;
	RSM_PSR_DT
	;;
	MOV_FROM_ISR(r19)
	MOV_FROM_IHA(r22)
	;;
	THASH(p8, r17, r16, r25)
	;;
	mov r18 = r22
	;;
	ITC_I_AND_D(p10, p11, r18, r24)
	;;
	MOV_TO_IFA(r22, r24)
	;;
	MOV_TO_ITIR(p8, r25, r24)
	MOV_TO_IHA(p8, r22, r24)
	;;
	ITC_D(p7, r24, r25)
	;;
	SSM_PSR_DT_AND_SRLZ_I
	;;
	RFI

/* Instruction and data TLB misses. */
	.global itlb_miss
itlb_miss:
	MOV_FROM_IFA(r16)
	MOV_FROM_IIP(r17)
	;;
	THASH(p0, r17, r16, r19)
	;;
	ld8 r18 = [r17]
	;;
	ITC_I(p0, r18, r19)
	;;
	RFI

	.global dtlb_miss
dtlb_miss:
	MOV_FROM_IFA(r16)
	;;
	THASH(p0, r17, r16, r19)
	;;
	ld8 r18 = [r17]
	;;
	ITC_D(p0, r18, r19)
	;;
	RFI

/* Alternate data TLB miss: an identity mapping, under the region predicate. */
	.global alt_dtlb_miss
alt_dtlb_miss:
	MOV_FROM_IFA(r16)
	MOV_FROM_ISR(r20)
	MOV_FROM_IPSR(p0, r21)
	;;
	cmp.ne p6, p0 = r0, r16
	;;
	MOV_TO_IPSR(p6, r21, r24)
	;;
	ITC_D(p6, r16, r24)
	;;
	RFI

/* External interrupt: acknowledge, save the minimal state, unmask, handle, mask. */
	.global interrupt
interrupt:
	SAVE_MIN_WITH_COVER
	;;
	MOV_FROM_IVR(r15, r31)
	;;
	SSM_PSR_IC_AND_SRLZ_D(r18, r19)
	;;
	BSW_1(r2, r3)
	;;
	SSM_PSR_I(p0, p6, r2)
	;;
	br.call.sptk.many b0 = ia64_handle_irq
	;;
	RSM_PSR_I(p0, r2, r3)
	;;
	BSW_0(r2, r3, r15)
	;;
	RSM_PSR_IC(r2)
	;;
	RFI

/* Break fault: the immediate, and the accounting timestamp. */
	.global break_fault
break_fault:
	SAVE_MIN
	;;
	MOV_FROM_IIM(r17)
	MOV_FROM_PSR(p0, r18, r19)
	MOV_FROM_ITC(p0, p6, r20, r21)
	;;
	SSM_PSR_IC_AND_DEFAULT_BITS_AND_SRLZ_I(r3, r24)
	;;
	RFI

/* Leaving the kernel: switch the current task, restore the interruption state. */
	.global leave_kernel
leave_kernel:
	RSM_PSR_I_IC(r2, r3, r15)
	;;
	MOV_TO_KR(6, r20, r2, r3)
	;;
	RSM_PSR_BE_I(r2, r3)
	;;
	COVER
	;;
	MOV_TO_IFS(p0, r29, r16)
	MOV_TO_IIP(r28, r17)
	;;
	RFI
