/*
 * The exit path of switch.c: swap to the user GS base and back, then return through
 * an interrupt frame to the caller, at the same privilege level. Built from the same
 * source in paravirt mode (patch sites through pv_ops) and native mode.
 */
#include "pvops_asm.h"

	.text
	.globl exit_to_task
	.type exit_to_task, @function
exit_to_task:
	SWAPGS
	leaq 1(%rdi), %rax
	SWAPGS
	/* An interrupt-return frame that lands at 1: with the current stack and flags. */
	movq %rsp, %rdx
	movq %ss, %rcx
	pushq %rcx
	pushq %rdx
	pushfq
	movq %cs, %rcx
	pushq %rcx
	leaq 1f(%rip), %rdx
	pushq %rdx
	INTERRUPT_RETURN
1:
	ret
	.size exit_to_task, . - exit_to_task
