/*
 * Xen PV guest internals: hypercalls through the hypercall page, the P2M/M2P
 * translations, multicall batching and the C-level event mask helpers.
 */
#ifndef PVGEN_GUEST_XEN_H
#define PVGEN_GUEST_XEN_H

#include "guest.h"
#include "lazy.h"

extern char hypercall_page[];
extern struct start_info *xen_start_info;
extern struct shared_info *HYPERVISOR_shared_info;
extern unsigned long *xen_p2m_addr;
extern unsigned long xen_p2m_size;
extern unsigned long *machine_to_phys_mapping;
extern unsigned long machine_to_phys_nr;

/* -- hypercalls: `call hypercall_page + nr*32`, arguments in rdi rsi rdx r10 r8, result in rax -- */

#define __HYPERCALL "call hypercall_page+%c[offset]"
#define __HYPERCALL_ENTRY(name) [offset] "i"(__HYPERVISOR_##name * HYPERCALL_ENTRY_SIZE)
#define __HYPERCALL_DECLS                                   \
	register unsigned long __res asm("rax");           \
	register unsigned long __arg1 asm("rdi") = __a1;   \
	register unsigned long __arg2 asm("rsi") = __a2;   \
	register unsigned long __arg3 asm("rdx") = __a3;   \
	register unsigned long __arg4 asm("r10") = __a4;   \
	register unsigned long __arg5 asm("r8") = __a5;
#define __HYPERCALL_OUT "=r"(__res), "+r"(__arg1), "+r"(__arg2), "+r"(__arg3), "+r"(__arg4), "+r"(__arg5)

#define _hypercall5(type, name, a1, a2, a3, a4, a5)                                          \
	({                                                                                    \
		unsigned long __a1 = (unsigned long)(a1), __a2 = (unsigned long)(a2);        \
		unsigned long __a3 = (unsigned long)(a3), __a4 = (unsigned long)(a4);        \
		unsigned long __a5 = (unsigned long)(a5), __result;                           \
		{                                                                             \
			__HYPERCALL_DECLS                                                     \
			asm volatile(__HYPERCALL : __HYPERCALL_OUT : __HYPERCALL_ENTRY(name) \
				     : "memory", "r9", "r11", "rcx");                          \
			__result = __res;                                                     \
		}                                                                             \
		(type)__result;                                                               \
	})
#define _hypercall0(type, name) _hypercall5(type, name, 0, 0, 0, 0, 0)
#define _hypercall1(type, name, a1) _hypercall5(type, name, a1, 0, 0, 0, 0)
#define _hypercall2(type, name, a1, a2) _hypercall5(type, name, a1, a2, 0, 0, 0)
#define _hypercall3(type, name, a1, a2, a3) _hypercall5(type, name, a1, a2, a3, 0, 0)
#define _hypercall4(type, name, a1, a2, a3, a4) _hypercall5(type, name, a1, a2, a3, a4, 0)

/* A hypercall whose number is known only at run time (multicall flush of a single entry). */
static inline long xen_single_call(unsigned long call, unsigned long a1, unsigned long a2, unsigned long a3,
				   unsigned long a4, unsigned long a5)
{
	register unsigned long __res asm("rax") = (unsigned long)&hypercall_page[call * HYPERCALL_ENTRY_SIZE];
	register unsigned long __arg1 asm("rdi") = a1;
	register unsigned long __arg2 asm("rsi") = a2;
	register unsigned long __arg3 asm("rdx") = a3;
	register unsigned long __arg4 asm("r10") = a4;
	register unsigned long __arg5 asm("r8") = a5;
	asm volatile("call *%%rax" : "+r"(__res), "+r"(__arg1), "+r"(__arg2), "+r"(__arg3), "+r"(__arg4), "+r"(__arg5)
		     : : "memory", "r9", "r11", "rcx");
	return (long)__res;
}

static inline int HYPERVISOR_mmu_update(struct mmu_update *req, int count, int *success_count, u16 domid)
{
	return _hypercall4(int, mmu_update, req, count, success_count, domid);
}
static inline int HYPERVISOR_mmuext_op(struct mmuext_op *op, int count, int *success_count, u16 domid)
{
	return _hypercall4(int, mmuext_op, op, count, success_count, domid);
}
static inline int HYPERVISOR_set_trap_table(struct trap_info *table)
{
	return _hypercall1(int, set_trap_table, table);
}
static inline int HYPERVISOR_set_gdt(unsigned long *frames, int entries)
{
	return _hypercall2(int, set_gdt, frames, entries);
}
static inline int HYPERVISOR_stack_switch(unsigned long ss, unsigned long esp)
{
	return _hypercall2(int, stack_switch, ss, esp);
}
static inline int HYPERVISOR_fpu_taskswitch(int set)
{
	return _hypercall1(int, fpu_taskswitch, set);
}
static inline int HYPERVISOR_sched_op(int cmd, void *arg)
{
	return _hypercall2(int, sched_op, cmd, arg);
}
static inline long HYPERVISOR_set_timer_op(u64 timeout)
{
	return _hypercall1(long, set_timer_op, timeout);
}
static inline int HYPERVISOR_set_debugreg(int reg, unsigned long value)
{
	return _hypercall2(int, set_debugreg, reg, value);
}
static inline unsigned long HYPERVISOR_get_debugreg(int reg)
{
	return _hypercall1(unsigned long, get_debugreg, reg);
}
static inline int HYPERVISOR_update_descriptor(u64 ma, u64 desc)
{
	return _hypercall2(int, update_descriptor, ma, desc);
}
static inline int HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{
	return _hypercall2(int, memory_op, cmd, arg);
}
static inline int HYPERVISOR_multicall(struct multicall_entry *calls, u32 nr)
{
	return _hypercall2(int, multicall, calls, nr);
}
static inline int HYPERVISOR_update_va_mapping(unsigned long va, pte_t new_val, unsigned long flags)
{
	return _hypercall3(int, update_va_mapping, va, new_val, flags);
}
static inline int HYPERVISOR_xen_version(int cmd, void *arg)
{
	return _hypercall2(int, xen_version, cmd, arg);
}
static inline int HYPERVISOR_console_io(int cmd, int count, const char *str)
{
	return _hypercall3(int, console_io, cmd, count, str);
}
static inline int HYPERVISOR_vcpu_op(int cmd, int vcpuid, void *extra_args)
{
	return _hypercall3(int, vcpu_op, cmd, vcpuid, extra_args);
}
static inline int HYPERVISOR_set_segment_base(int reg, unsigned long value)
{
	return _hypercall2(int, set_segment_base, reg, value);
}
static inline int HYPERVISOR_callback_op(int cmd, void *arg)
{
	return _hypercall2(int, callback_op, cmd, arg);
}
static inline int HYPERVISOR_event_channel_op(int cmd, void *arg)
{
	return _hypercall2(int, event_channel_op, cmd, arg);
}
static inline int HYPERVISOR_physdev_op(int cmd, void *arg)
{
	return _hypercall2(int, physdev_op, cmd, arg);
}

/* -- pseudo-physical <-> machine frames ------------------------------------------------------ */

static inline unsigned long __pfn_to_mfn(unsigned long pfn)
{
	if (pfn < xen_p2m_size)
		return xen_p2m_addr[pfn];
	return pfn; /* beyond the domain's RAM: identity (Linux's IDENTITY_FRAME) */
}

static inline unsigned long pfn_to_mfn(unsigned long pfn)
{
	return __pfn_to_mfn(pfn);
}

static inline unsigned long mfn_to_pfn(unsigned long mfn)
{
	unsigned long pfn = ~0UL;
	if (mfn < machine_to_phys_nr)
		pfn = machine_to_phys_mapping[mfn];
	/* The M2P may name a frame of another domain: only a round trip proves it ours. */
	if (pfn != ~0UL && __pfn_to_mfn(pfn) != mfn)
		pfn = ~0UL;
	if (pfn == ~0UL && mfn >= xen_p2m_size && __pfn_to_mfn(mfn) == mfn)
		pfn = mfn;
	return pfn;
}

static inline u64 virt_to_machine(const volatile void *p)
{
	unsigned long pa = __pa(p);
	return (pfn_to_mfn(PFN_DOWN(pa)) << PAGE_SHIFT) | (pa & (PAGE_SIZE - 1));
}

static inline unsigned long virt_to_mfn(const volatile void *p)
{
	return pfn_to_mfn(PFN_DOWN(__pa(p)));
}

/* -- event mask, C level (irq.c): the vcpu_info Xen delivers through ------------------------- */

static inline struct vcpu_info *xen_vcpu(void)
{
	return (struct vcpu_info *)this_cpu_read_8(PCPU_XEN_VCPU);
}

void xen_force_evtchn_callback(void);

static inline unsigned long xen_save_fl(void)
{
	/* Only IF is meaningful: set when events are not masked. */
	return (-(unsigned long)(xen_vcpu()->evtchn_upcall_mask == 0)) & X86_EFLAGS_IF;
}

static inline void xen_restore_fl(unsigned long flags)
{
	struct vcpu_info *vcpu = xen_vcpu();
	vcpu->evtchn_upcall_mask = !(flags & X86_EFLAGS_IF);
	barrier();
	if (!(vcpu->evtchn_upcall_mask) && unlikely(vcpu->evtchn_upcall_pending))
		xen_force_evtchn_callback();
}

static inline void xen_irq_disable(void)
{
	xen_vcpu()->evtchn_upcall_mask = 1;
}

static inline void xen_irq_enable(void)
{
	struct vcpu_info *vcpu = xen_vcpu();
	vcpu->evtchn_upcall_mask = 0;
	barrier();
	if (unlikely(vcpu->evtchn_upcall_pending))
		xen_force_evtchn_callback();
}

/* -- multicalls (multicalls.c) ---------------------------------------------------------------- */

struct multicall_space {
	struct multicall_entry *mc;
	void *args;
};

void xen_mc_flush(void);
struct multicall_space __xen_mc_entry(unsigned long args);
struct multicall_space xen_mc_extend_args(unsigned long op, unsigned long size);
void xen_mc_callback(void (*fn)(void *), void *data);
void xen_mc_batch(void);
void xen_mc_issue(u32 mode);

static inline struct multicall_space xen_mc_entry(unsigned long args)
{
	xen_mc_batch();
	return __xen_mc_entry(args);
}

static inline void MULTI_mmu_update(struct multicall_entry *mcl, struct mmu_update *req, int count,
				    int *success_count, u16 domid)
{
	mcl->op = __HYPERVISOR_mmu_update;
	mcl->args[0] = (unsigned long)req;
	mcl->args[1] = count;
	mcl->args[2] = (unsigned long)success_count;
	mcl->args[3] = domid;
}

static inline void MULTI_mmuext_op(struct multicall_entry *mcl, struct mmuext_op *op, int count,
				   int *success_count, u16 domid)
{
	mcl->op = __HYPERVISOR_mmuext_op;
	mcl->args[0] = (unsigned long)op;
	mcl->args[1] = count;
	mcl->args[2] = (unsigned long)success_count;
	mcl->args[3] = domid;
}

static inline void MULTI_stack_switch(struct multicall_entry *mcl, unsigned long ss, unsigned long esp)
{
	mcl->op = __HYPERVISOR_stack_switch;
	mcl->args[0] = ss;
	mcl->args[1] = esp;
}

static inline void MULTI_fpu_taskswitch(struct multicall_entry *mcl, int set)
{
	mcl->op = __HYPERVISOR_fpu_taskswitch;
	mcl->args[0] = set;
}

static inline void MULTI_update_descriptor(struct multicall_entry *mcl, u64 maddr, u64 desc)
{
	mcl->op = __HYPERVISOR_update_descriptor;
	mcl->args[0] = maddr;
	mcl->args[1] = desc;
}

static inline void MULTI_update_va_mapping(struct multicall_entry *mcl, unsigned long va, pte_t new_val,
					   unsigned long flags)
{
	mcl->op = __HYPERVISOR_update_va_mapping;
	mcl->args[0] = va;
	mcl->args[1] = new_val;
	mcl->args[2] = flags;
}

/* -- helpers shared by the Xen files ------------------------------------------------------------ */

pteval_t pte_mfn_to_pfn(pteval_t val);
pteval_t pte_pfn_to_mfn(pteval_t val);
void xen_extend_mmuext_op(const struct mmuext_op *op);
int xen_page_pinned(const volatile void *ptr);

#define _PAGE_PRESENT 0x001UL
#define _PAGE_RW 0x002UL
#define PTE_PFN_MASK 0x000ffffffffff000UL
#define PTE_FLAGS_MASK (~PTE_PFN_MASK)
#define PAGE_KERNEL_RO 0x8000000000000161UL
#define PAGE_KERNEL 0x8000000000000163UL

#endif
