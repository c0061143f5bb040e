/*
 * Xen PV entry points and register-preserving ops (xen-head.S, xen-asm.S, xen-asm_64.S).
 *
 * The ELF notes tell the domain builder the entry point and where the hypercall page
 * is; Xen fills that page with one 32-byte stub per hypercall. The irq ops reach this
 * CPU's vcpu_info through %gs (the per-CPU area it was registered in) and clobber only
 * %rax and the flags, as their callee-save sites require.
 */
#include "guest.h"

#define PER_CPU_VAR(off) %gs:(off)
#define VCPU_MASK PER_CPU_VAR(PCPU_XEN_VCPU_INFO + XEN_vcpu_info_mask)
#define VCPU_PENDING PER_CPU_VAR(PCPU_XEN_VCPU_INFO + XEN_vcpu_info_pending)

.macro ELFNOTE_HEAD type
	.balign 4
	.long 2f - 1f
	.long 4f - 3f
	.long \type
1:	.asciz "Xen"
2:	.balign 4
3:
.endm
.macro ELFNOTE_STR type, text
	ELFNOTE_HEAD \type
	.asciz "\text"
4:	.balign 4
.endm
.macro ELFNOTE_QUAD type, value
	ELFNOTE_HEAD \type
	.quad \value
4:	.balign 4
.endm

	/* Not allocated: the domain builder reads notes from the file, not from guest memory. */
	.pushsection .note.Xen, "", @note
	ELFNOTE_STR XEN_ELFNOTE_GUEST_OS, linux
	ELFNOTE_STR XEN_ELFNOTE_XEN_VERSION, xen-3.0
	ELFNOTE_QUAD XEN_ELFNOTE_VIRT_BASE, START_KERNEL_MAP
	ELFNOTE_QUAD XEN_ELFNOTE_PADDR_OFFSET, 0
	ELFNOTE_QUAD XEN_ELFNOTE_ENTRY, startup_xen
	ELFNOTE_QUAD XEN_ELFNOTE_HYPERCALL_PAGE, hypercall_page
	ELFNOTE_STR XEN_ELFNOTE_LOADER, generic
	ELFNOTE_STR XEN_ELFNOTE_FEATURES, !writable_page_tables|pae_pgdir_above_4gb
	.popsection

	.section .note.GNU-stack, "", @progbits

	.text

/* Filled by Xen: 128 entries of 32 bytes. int3 until then. */
	.balign PAGE_SIZE
	.globl hypercall_page
	.type hypercall_page, @object
hypercall_page:
	.fill PAGE_SIZE, 1, 0xcc
	.size hypercall_page, PAGE_SIZE
#define HYPERCALL(name) hypercall_page + __HYPERVISOR_##name * HYPERCALL_ENTRY_SIZE

/* The PV entry: Xen passes the start_info page in %rsi. */
	.globl startup_xen
	.type startup_xen, @function
startup_xen:
	movq %rsi, xen_start_info(%rip)
	jmp xen_start_kernel
	.size startup_xen, . - startup_xen

/* -- the event mask (irq ops) ------------------------------------------------------------------- */

	.globl xen_irq_enable_direct
	.type xen_irq_enable_direct, @function
xen_irq_enable_direct:
	movb $0, VCPU_MASK
	/* An event that arrived while masked is delivered now. */
	testb $0xff, VCPU_PENDING
	jz 1f
	call check_events
1:	ret
	.size xen_irq_enable_direct, . - xen_irq_enable_direct

	.globl xen_irq_disable_direct
	.type xen_irq_disable_direct, @function
xen_irq_disable_direct:
	movb $1, VCPU_MASK
	ret
	.size xen_irq_disable_direct, . - xen_irq_disable_direct

/* X86_EFLAGS_IF (0x200) in %ax when events are unmasked; only that bit is meaningful. */
	.globl xen_save_fl_direct
	.type xen_save_fl_direct, @function
xen_save_fl_direct:
	testb $0xff, VCPU_MASK
	setz %ah
	addb %ah, %ah
	ret
	.size xen_save_fl_direct, . - xen_save_fl_direct

	.globl xen_restore_fl_direct
	.type xen_restore_fl_direct, @function
xen_restore_fl_direct:
	testw $X86_EFLAGS_IF, %di
	setz VCPU_MASK
	/* pending == 1 and mask == 0 in one 16-bit compare (little-endian: pending is the low byte). */
	cmpw $0x0001, VCPU_PENDING
	jnz 1f
	call check_events
1:	ret
	.size xen_restore_fl_direct, . - xen_restore_fl_direct

/* Forces delivery of a pending event, saving everything a callee-save site keeps. */
	.globl check_events
	.type check_events, @function
check_events:
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	call xen_force_evtchn_callback
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
	ret
	.size check_events, . - check_events

/* -- returns to the guest through Xen ------------------------------------------------------------ */

/* The iret hypercall pops {rax, r11, rcx, flags, rip, cs, rflags, rsp, ss}; flags 0: not in a syscall. */
	.globl xen_iret
	.type xen_iret, @function
xen_iret:
	pushq $0
	jmp HYPERCALL(iret)
	.size xen_iret, . - xen_iret

/* sysretq's replacement: build the iret frame on the kernel stack, flagged VGCF_in_syscall. */
	.globl xen_sysret64
	.type xen_sysret64, @function
xen_sysret64:
	movq %rsp, PER_CPU_VAR(PCPU_RSP_SCRATCH)
	movq PER_CPU_VAR(PCPU_TOP_OF_STACK), %rsp
	pushq $__USER_DS
	pushq PER_CPU_VAR(PCPU_RSP_SCRATCH)
	pushq %r11
	pushq $__USER_CS
	pushq %rcx
	pushq $VGCF_in_syscall
	jmp HYPERCALL(iret)
	.size xen_sysret64, . - xen_sysret64

/* Xen pushes %rcx and %r11 above the hardware frame of an exception: take them back. */
	.globl xen_adjust_exception_frame
	.type xen_adjust_exception_frame, @function
xen_adjust_exception_frame:
	mov 8+0(%rsp), %rcx
	mov 8+8(%rsp), %r11
	ret $16
	.size xen_adjust_exception_frame, . - xen_adjust_exception_frame

/*
 * The event upcall. Xen enters with events masked and {rcx, r11, rip, cs, rflags, rsp,
 * ss} on the stack (the saved mask is in rflags.IF); the iret hypercall returns to the
 * interrupted code and restores the mask.
 */
	.globl xen_hypervisor_callback
	.type xen_hypervisor_callback, @function
xen_hypervisor_callback:
	popq %rcx
	popq %r11
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	call xen_evtchn_do_upcall
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
	jmp xen_iret
	.size xen_hypervisor_callback, . - xen_hypervisor_callback

/* Xen calls this when it cannot load the segments of a return frame: retry through iret. */
	.globl xen_failsafe_callback
	.type xen_failsafe_callback, @function
xen_failsafe_callback:
	popq %rcx
	popq %r11
	addq $32, %rsp /* the four segment selectors Xen failed to load */
	jmp xen_iret
	.size xen_failsafe_callback, . - xen_failsafe_callback
