/*
 * A kernel-entry-like x86-64 routine set that uses every pvgen asm macro. Built by
 * tests/test_backend_asm.py with gcc -c -x assembler-with-cpp in each mode of
 * pvops_asm.h. Not real kernel code: it only has the shapes of entry_64.S.
 */
#include "pvops_asm.h"

	.text

/* The syscall entry: swap to the kernel %gs with no usable stack, then return. */
	.globl entry_SYSCALL_64
entry_SYSCALL_64:
	SWAPGS_UNSAFE_STACK
	movq %rsp, %gs:0x14
	movq %gs:0x1c, %rsp
	pushq %rcx
	pushq %r11
	ENABLE_INTERRUPTS(CLBR_NONE)
	call do_syscall_64
	DISABLE_INTERRUPTS(CLBR_ANY)
	SAVE_FLAGS(CLBR_RAX | CLBR_RCX)
	SAVE_FLAGS(CLBR_RAX)
	popq %r11
	popq %rcx
	movq %gs:0x14, %rsp
	USERGS_SYSRET64

/* A page fault: adjust the frame, take the fault address, switch %gs when from user. */
	.globl page_fault
page_fault:
	PARAVIRT_ADJUST_EXCEPTION_FRAME
	testb $3, 8(%rsp)
	jz 1f
	SWAPGS
1:
	GET_CR2_INTO(%rdi)
	GET_CR2_INTO(%rax)
	DISABLE_INTERRUPTS(CLBR_NONE)
	call do_page_fault
	ENABLE_INTERRUPTS(CLBR_RAX | CLBR_RDI)
	DISABLE_INTERRUPTS(CLBR_ANY)
	testb $3, 8(%rsp)
	jz 2f
	SWAPGS
2:
	INTERRUPT_RETURN
