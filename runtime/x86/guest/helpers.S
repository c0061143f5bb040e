/*
 * Shared asm helpers: `pvgen_ret0` for ops that do nothing but return a value (boot's
 * patcher names it; weak, so a generated table that defines it wins).
 */
#include "guest.h"

	.section .note.GNU-stack, "", @progbits
	.text
	.weak pvgen_ret0
	.type pvgen_ret0, @function
pvgen_ret0:
	xorl %eax, %eax
	ret
	.size pvgen_ret0, . - pvgen_ret0

/* KVM's vcpu_is_preempted, register-preserving (only %rax): per_cpu(steal_time, cpu).preempted != 0. */
	.globl __kvm_vcpu_is_preempted
	.type __kvm_vcpu_is_preempted, @function
__kvm_vcpu_is_preempted:
	movq __per_cpu_offset(,%rdi,8), %rax
	cmpb $0, PCPU_STEAL_TIME + KVM_STEAL_TIME_preempted(%rax)
	setne %al
	ret
	.size __kvm_vcpu_is_preempted, . - __kvm_vcpu_is_preempted
