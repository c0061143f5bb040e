/*
 * Per-CPU areas, the boot of a bare-metal or HVM kernel, and a small page pool.
 *
 * Each CPU owns one page-aligned struct pvgen_percpu; %gs points at the running CPU's,
 * so `%gs:PCPU_x` is that CPU's copy of variable x, as Linux's `PER_CPU_VAR(x)` is.
 */
#include "guest.h"

#define CHECK_OFFSET(field, offset) \
	_Static_assert(__builtin_offsetof(struct pvgen_percpu, field) == (offset), #field " is not at " #offset)
CHECK_OFFSET(self, PCPU_SELF);
CHECK_OFFSET(cpu_number, PCPU_CPU_NUMBER);
CHECK_OFFSET(xen_vcpu, PCPU_XEN_VCPU);
CHECK_OFFSET(xen_cr3, PCPU_XEN_CR3);
CHECK_OFFSET(xen_current_cr3, PCPU_XEN_CURRENT_CR3);
CHECK_OFFSET(xen_cr0_value, PCPU_XEN_CR0_VALUE);
CHECK_OFFSET(lazy_mode, PCPU_LAZY_MODE);
CHECK_OFFSET(lazy_mmu_task, PCPU_LAZY_MMU_TASK);
CHECK_OFFSET(kicker_port, PCPU_KICKER_PORT);
CHECK_OFFSET(timer_port, PCPU_TIMER_PORT);
CHECK_OFFSET(upcalls, PCPU_UPCALLS);
CHECK_OFFSET(events, PCPU_EVENTS);
CHECK_OFFSET(kicks, PCPU_KICKS);
CHECK_OFFSET(rsp_scratch, PCPU_RSP_SCRATCH);
CHECK_OFFSET(top_of_stack, PCPU_TOP_OF_STACK);
CHECK_OFFSET(xen_vcpu_info, PCPU_XEN_VCPU_INFO);
CHECK_OFFSET(xen_runstate, PCPU_XEN_RUNSTATE);
CHECK_OFFSET(steal_time, PCPU_STEAL_TIME);
CHECK_OFFSET(hv_clock, PCPU_HV_CLOCK);
CHECK_OFFSET(tss, PCPU_TSS);
CHECK_OFFSET(gdt, PCPU_GDT);
CHECK_OFFSET(port_events, PCPU_PORT_EVENTS);
_Static_assert(sizeof(struct pvgen_percpu) == PCPU_SIZE, "one page per CPU");
_Static_assert(sizeof(struct vcpu_info) == 64, "vcpu_info is 64 bytes");
_Static_assert(__builtin_offsetof(struct vcpu_info, evtchn_upcall_mask) == XEN_vcpu_info_mask, "mask @1");
_Static_assert(__builtin_offsetof(struct vcpu_info, evtchn_pending_sel) == XEN_vcpu_info_pending_sel, "sel @8");
_Static_assert(__builtin_offsetof(struct vcpu_info, arch.cr2) == XEN_vcpu_info_arch_cr2, "cr2 @16");
_Static_assert(__builtin_offsetof(struct vcpu_info, time) == XEN_vcpu_info_time, "time @32");
_Static_assert(__builtin_offsetof(struct shared_info, evtchn_pending) == 2048, "evtchn_pending @2048");
_Static_assert(__builtin_offsetof(struct shared_info, wc) == 3072, "wc @3072");
_Static_assert(sizeof(struct shared_info) == 3136, "shared_info is 3136 bytes");
_Static_assert(__builtin_offsetof(struct start_info, mfn_list) == 104, "mfn_list @104");
_Static_assert(__builtin_offsetof(struct start_info, cmd_line) == 128, "cmd_line @128");
_Static_assert(sizeof(struct kvm_steal_time) == 64, "kvm_steal_time is 64 bytes");
_Static_assert(__builtin_offsetof(struct kvm_steal_time, preempted) == KVM_STEAL_TIME_preempted, "preempted @16");
_Static_assert(sizeof(struct pvclock_vcpu_time_info) == 32, "pvclock is 32 bytes");
_Static_assert(sizeof(struct desc_struct) == 8 && sizeof(struct gate_struct) == 16, "descriptor sizes");
_Static_assert(sizeof(struct mmuext_op) == 24 && sizeof(struct multicall_entry) == 64, "Xen argument sizes");

struct pvgen_percpu pvgen_percpu[NR_CPUS] = {
	[0] = { .self = &pvgen_percpu[0], .cpu_number = 0, .online = 1, .kicker_port = -1, .timer_port = -1 },
	[1] = { .self = &pvgen_percpu[1], .cpu_number = 1, .kicker_port = -1, .timer_port = -1 },
	[2] = { .self = &pvgen_percpu[2], .cpu_number = 2, .kicker_port = -1, .timer_port = -1 },
	[3] = { .self = &pvgen_percpu[3], .cpu_number = 3, .kicker_port = -1, .timer_port = -1 },
};

unsigned long __per_cpu_offset[NR_CPUS] = {
	(unsigned long)&pvgen_percpu[0],
	(unsigned long)&pvgen_percpu[1],
	(unsigned long)&pvgen_percpu[2],
	(unsigned long)&pvgen_percpu[3],
};

/* The IDT every CPU loads, and the descriptor lidt takes. */
gate_desc idt_table[256] __attribute__((aligned(PAGE_SIZE)));
struct desc_ptr idt_descr = { .size = sizeof(idt_table) - 1, .address = (unsigned long)idt_table };

/* sched_clock: cycles to ns as mul/shift (Linux's cyc2ns), for a TSC of tsc_khz. */
unsigned long tsc_khz = 2000000;
u32 cyc2ns_mul;
u32 cyc2ns_shift;

void set_cyc2ns_scale(unsigned long khz)
{
	/* ns = cycles * (10^6 / khz) = (cycles * mul) >> shift, with shift 22 as Linux's CYC2NS_SCALE_FACTOR-era code. */
	cyc2ns_shift = 22;
	cyc2ns_mul = (u32)((1000000UL << 22) / khz);
}

/*
 * The boot of a kernel that owns the CPU (bare metal or HVM): point %gs at CPU 0's area
 * and load its TSS stack pointer. Returns the %gs base it set.
 */
unsigned long native_start_kernel(void)
{
	struct pvgen_percpu *pc = &pvgen_percpu[0];

	native_wrmsr(MSR_GS_BASE, (unsigned long)pc);
	pc->tss.io_bitmap_base = sizeof(struct x86_hw_tss);
	set_cyc2ns_scale(tsc_khz);
	return (unsigned long)pc;
}

/* -- pages for page-table tops (xen_pgd_alloc) ------------------------------------------------ */

#define POOL_PAGES 16
static unsigned char page_pool[POOL_PAGES][PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static unsigned int pool_used;

unsigned long pvgen_get_free_page(void)
{
	for (unsigned int i = 0; i < POOL_PAGES; i++) {
		if (!(pool_used & (1U << i))) {
			pool_used |= 1U << i;
			for (unsigned int j = 0; j < PAGE_SIZE / sizeof(unsigned long); j++)
				((unsigned long *)page_pool[i])[j] = 0;
			return (unsigned long)page_pool[i];
		}
	}
	return 0;
}

void pvgen_free_page(unsigned long page)
{
	unsigned long index = (page - (unsigned long)page_pool) / PAGE_SIZE;
	if (page && index < POOL_PAGES)
		pool_used &= ~(1U << index);
}
