/*
 * pvgen guest support library for x86-64: the definitions shared by its C and asm files.
 *
 * Layouts follow the ABIs the hypervisor models implement (Xen's xen.h/vcpu.h/event_channel.h,
 * KVM's kvm_para.h, pvclock) and the per-CPU area the library keeps for each CPU. The
 * runtime (the models in runtime/x86/hv) reads and writes the same offsets; docs/x86-runtime.md
 * lists them. Kernel-map addresses translate to guest-physical ones the Linux way:
 * __pa(va) = va - __START_KERNEL_map.
 */
#ifndef PVGEN_GUEST_H
#define PVGEN_GUEST_H

#define NR_CPUS 4
#define PAGE_SHIFT 12
#define PAGE_SIZE 4096
#define START_KERNEL_MAP 0xffffffff80000000
#define PAGE_OFFSET_BASE 0xffff888000000000

/* Per-CPU area (struct pvgen_percpu): %gs points at the running CPU's. */
#define PCPU_SELF 0
#define PCPU_CPU_NUMBER 8
#define PCPU_XEN_VCPU 16	/* struct vcpu_info *: the vcpu_info Xen uses for this CPU */
#define PCPU_XEN_CR3 24
#define PCPU_XEN_CURRENT_CR3 32
#define PCPU_XEN_CR0_VALUE 40
#define PCPU_LAZY_MODE 48
#define PCPU_LAZY_MMU_TASK 56
#define PCPU_KICKER_PORT 64
#define PCPU_TIMER_PORT 68
#define PCPU_UPCALLS 72
#define PCPU_EVENTS 80
#define PCPU_KICKS 88
#define PCPU_RSP_SCRATCH 96
#define PCPU_TOP_OF_STACK 104
#define PCPU_XEN_VCPU_INFO 128	/* struct vcpu_info, registered with VCPUOP_register_vcpu_info */
#define PCPU_XEN_RUNSTATE 192	/* struct vcpu_runstate_info */
#define PCPU_STEAL_TIME 256	/* struct kvm_steal_time (64-byte aligned) */
#define PCPU_HV_CLOCK 320	/* struct pvclock_vcpu_time_info for kvmclock */
#define PCPU_TSS 384		/* struct x86_hw_tss */
#define PCPU_GDT 512		/* 16 descriptors */
#define PCPU_PORT_EVENTS 640	/* u32 per event-channel port, 64 ports */
#define PCPU_SIZE 4096

/* Xen: vcpu_info field offsets (xen.h, x86-64). */
#define XEN_vcpu_info_pending 0
#define XEN_vcpu_info_mask 1
#define XEN_vcpu_info_pending_sel 8
#define XEN_vcpu_info_arch_cr2 16
#define XEN_vcpu_info_time 32

/* Xen hypercall numbers (xen.h). */
#define __HYPERVISOR_set_trap_table 0
#define __HYPERVISOR_mmu_update 1
#define __HYPERVISOR_set_gdt 2
#define __HYPERVISOR_stack_switch 3
#define __HYPERVISOR_set_callbacks 4
#define __HYPERVISOR_fpu_taskswitch 5
#define __HYPERVISOR_sched_op_compat 6
#define __HYPERVISOR_set_debugreg 8
#define __HYPERVISOR_get_debugreg 9
#define __HYPERVISOR_update_descriptor 10
#define __HYPERVISOR_memory_op 12
#define __HYPERVISOR_multicall 13
#define __HYPERVISOR_update_va_mapping 14
#define __HYPERVISOR_set_timer_op 15
#define __HYPERVISOR_xen_version 17
#define __HYPERVISOR_console_io 18
#define __HYPERVISOR_vm_assist 21
#define __HYPERVISOR_iret 23
#define __HYPERVISOR_vcpu_op 24
#define __HYPERVISOR_set_segment_base 25
#define __HYPERVISOR_mmuext_op 26
#define __HYPERVISOR_sched_op 29
#define __HYPERVISOR_callback_op 30
#define __HYPERVISOR_event_channel_op 32
#define __HYPERVISOR_physdev_op 33
#define HYPERCALL_ENTRY_SIZE 32

/* Xen ELF notes (elfnote.h). */
#define XEN_ELFNOTE_ENTRY 1
#define XEN_ELFNOTE_HYPERCALL_PAGE 2
#define XEN_ELFNOTE_VIRT_BASE 3
#define XEN_ELFNOTE_PADDR_OFFSET 4
#define XEN_ELFNOTE_XEN_VERSION 5
#define XEN_ELFNOTE_GUEST_OS 6
#define XEN_ELFNOTE_LOADER 8
#define XEN_ELFNOTE_FEATURES 10

#define X86_EFLAGS_IF 0x200
#define __KERNEL_CS 0x10
#define __KERNEL_DS 0x18
#define __USER_DS 0x2b
#define __USER_CS 0x33
#define X86_EFLAGS_IOPL 0x3000
#define VGCF_in_syscall 0x100

/* KVM (kvm_para.h). */
#define KVM_HC_VAPIC_POLL_IRQ 1
#define KVM_HC_KICK_CPU 5
#define KVM_HC_SEND_IPI 10
#define KVM_HC_SCHED_YIELD 11
#define KVM_STEAL_TIME_preempted 16

#ifndef __ASSEMBLY__

#include "pvops.h"

typedef signed char s8;
typedef int s32;
typedef long long s64;

#define EIO 5
#define EINVAL 22
#define ENOMEM 12

#define barrier() asm volatile("" ::: "memory")
#define READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define BUG() asm volatile("ud2")
#define BUG_ON(c) do { if (c) BUG(); } while (0)
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* -- address translation ------------------------------------------------------------- */

static inline unsigned long __pa(const volatile void *p)
{
	unsigned long va = (unsigned long)p;
	return va >= START_KERNEL_MAP ? va - START_KERNEL_MAP : va - PAGE_OFFSET_BASE;
}

static inline void *__va(unsigned long pa)
{
	return (void *)(pa + START_KERNEL_MAP);
}

#define PFN_DOWN(x) ((x) >> PAGE_SHIFT)

/* -- descriptors and the TSS -------------------------------------------------------------- */

struct desc_struct {
	u16 limit0;
	u16 base0;
	u16 base1 : 8, type : 4, s : 1, dpl : 2, p : 1;
	u16 limit1 : 4, avl : 1, l : 1, d : 1, g : 1, base2 : 8;
} __attribute__((packed));

struct gate_struct {
	u16 offset_low;
	u16 segment;
	u16 ist : 3, zero : 5, type : 5, dpl : 2, p : 1;
	u16 offset_middle;
	u32 offset_high;
	u32 reserved;
} __attribute__((packed));

struct desc_ptr {
	unsigned short size;
	unsigned long address;
} __attribute__((packed));

struct x86_hw_tss {
	u32 reserved1;
	u64 sp0;
	u64 sp1;
	u64 sp2;
	u64 reserved2;
	u64 ist[7];
	u32 reserved3;
	u32 reserved4;
	u16 reserved5;
	u16 io_bitmap_base;
} __attribute__((packed));

#define GDT_ENTRIES 16
#define GDT_ENTRY_TLS_MIN 12
#define GDT_ENTRY_TLS_ENTRIES 3
#define DESC_TSS 0x9
#define DESC_LDT 0x2

/* The library's view of the kernel objects the pv ops take (Linux keeps far more in them). */
struct thread_struct {
	struct desc_struct tls_array[GDT_ENTRY_TLS_ENTRIES];
	unsigned long sp0;
};

struct mm_struct {
	pgd_t *pgd;
	pgd_t *user_pgd;	/* Xen: the user-mode top level, allocated by xen_pgd_alloc */
	int pinned;
};

struct cpumask {
	unsigned long bits[1];
};

struct flush_tlb_info {
	struct mm_struct *mm;
	unsigned long start;
	unsigned long end;
};
#define TLB_FLUSH_ALL (~0UL)

/* -- paravirt clock (pvclock-abi.h) -------------------------------------------------------- */

struct pvclock_vcpu_time_info {
	u32 version;
	u32 pad0;
	u64 tsc_timestamp;
	u64 system_time;
	u32 tsc_to_system_mul;
	s8 tsc_shift;
	u8 flags;
	u8 pad[2];
};

struct pvclock_wall_clock {
	u32 version;
	u32 sec;
	u32 nsec;
} __attribute__((packed));

/* -- Xen (xen.h, vcpu.h, event_channel.h, physdev.h, callback.h, sched.h, memory.h) ------ */

struct arch_vcpu_info {
	unsigned long cr2;
	unsigned long pad;
};

struct vcpu_info {
	u8 evtchn_upcall_pending;
	u8 evtchn_upcall_mask;
	unsigned long evtchn_pending_sel;
	struct arch_vcpu_info arch;
	struct pvclock_vcpu_time_info time;
};

#define XEN_LEGACY_MAX_VCPUS 32
struct arch_shared_info {
	unsigned long max_pfn;
	unsigned long pfn_to_mfn_frame_list_list;
	unsigned long nmi_reason;
	unsigned long p2m_cr3;
	unsigned long p2m_vaddr;
	unsigned long p2m_generation;
};

struct shared_info {
	struct vcpu_info vcpu_info[XEN_LEGACY_MAX_VCPUS];
	unsigned long evtchn_pending[64];
	unsigned long evtchn_mask[64];
	struct pvclock_wall_clock wc;
	struct arch_shared_info arch;
};

#define MAX_GUEST_CMDLINE 1024
struct start_info {
	char magic[32];
	unsigned long nr_pages;
	unsigned long shared_info;	/* machine address */
	u32 flags;
	unsigned long store_mfn;
	u32 store_evtchn;
	union {
		struct {
			unsigned long mfn;
			u32 evtchn;
		} domU;
		struct {
			u32 info_off;
			u32 info_size;
		} dom0;
	} console;
	unsigned long pt_base;
	unsigned long nr_pt_frames;
	unsigned long mfn_list;
	unsigned long mod_start;
	unsigned long mod_len;
	char cmd_line[MAX_GUEST_CMDLINE];
	unsigned long first_p2m_pfn;
	unsigned long nr_p2m_frames;
};

struct vcpu_runstate_info {
	int state;
	u64 state_entry_time;
	u64 time[4];
};
#define RUNSTATE_running 0
#define RUNSTATE_runnable 1
#define RUNSTATE_blocked 2
#define RUNSTATE_offline 3
#define XEN_RUNSTATE_UPDATE (1ULL << 63)

struct mmu_update {
	u64 ptr;
	u64 val;
};
#define MMU_NORMAL_PT_UPDATE 0
#define MMU_MACHPHYS_UPDATE 1

struct mmuext_op {
	unsigned int cmd;
	union {
		unsigned long mfn;
		unsigned long linear_addr;
	} arg1;
	union {
		unsigned int nr_ents;
		const void *vcpumask;
		unsigned long src_mfn;
	} arg2;
};
#define MMUEXT_PIN_L1_TABLE 0
#define MMUEXT_PIN_L2_TABLE 1
#define MMUEXT_PIN_L3_TABLE 2
#define MMUEXT_PIN_L4_TABLE 3
#define MMUEXT_UNPIN_TABLE 4
#define MMUEXT_NEW_BASEPTR 5
#define MMUEXT_TLB_FLUSH_LOCAL 6
#define MMUEXT_INVLPG_LOCAL 7
#define MMUEXT_TLB_FLUSH_MULTI 8
#define MMUEXT_INVLPG_MULTI 9
#define MMUEXT_TLB_FLUSH_ALL 10
#define MMUEXT_INVLPG_ALL 11
#define MMUEXT_FLUSH_CACHE 12
#define MMUEXT_SET_LDT 13
#define MMUEXT_NEW_USER_BASEPTR 15
#define DOMID_SELF 0x7ff0U

struct multicall_entry {
	unsigned long op;
	long result;
	unsigned long args[6];
};

struct trap_info {
	u8 vector;
	u8 flags;
	u16 cs;
	unsigned long address;
};

#define UVMF_INVLPG 2
#define SEGBASE_FS 0
#define SEGBASE_GS_USER 1
#define SEGBASE_GS_KERNEL 2
#define SEGBASE_GS_USER_SEL 3

#define SCHEDOP_yield 0
#define SCHEDOP_block 1
#define SCHEDOP_shutdown 2
#define SCHEDOP_poll 3
struct sched_poll {
	u32 *ports;
	unsigned int nr_ports;
	u64 timeout;
};

#define VCPUOP_up 1
#define VCPUOP_down 2
#define VCPUOP_register_runstate_memory_area 5
#define VCPUOP_stop_periodic_timer 7
#define VCPUOP_register_vcpu_info 10
struct vcpu_register_vcpu_info {
	u64 mfn;
	u32 offset;
	u32 rsvd;
};
struct vcpu_register_runstate_memory_area {
	u64 addr;
};

#define EVTCHNOP_bind_virq 1
#define EVTCHNOP_send 4
#define EVTCHNOP_bind_ipi 7
struct evtchn_bind_virq {
	u32 virq;
	u32 vcpu;
	u32 port;
};
struct evtchn_bind_ipi {
	u32 vcpu;
	u32 port;
};
struct evtchn_send {
	u32 port;
};
#define VIRQ_TIMER 0

#define PHYSDEVOP_set_iopl 6
struct physdev_set_iopl {
	u32 iopl;
};

#define CALLBACKOP_register 0
#define CALLBACKTYPE_event 0
#define CALLBACKTYPE_failsafe 1
#define CALLBACKTYPE_syscall 2
#define CALLBACKF_mask_events 1
struct callback_register {
	u16 type;
	u16 flags;
	unsigned long address;
};

#define XENVER_version 0
#define XENMEM_machphys_mapping 12
struct xen_machphys_mapping {
	unsigned long v_start;
	unsigned long v_end;
	unsigned long max_mfn;
};
#define CONSOLEIO_write 0

#define INVALID_P2M_ENTRY (~0UL)

/* -- KVM (kvm_para.h) -------------------------------------------------------------------- */

struct kvm_steal_time {
	u64 steal;
	u32 version;
	u32 flags;
	u8 preempted;
	u8 u8_pad[3];
	u32 pad[11];
};
#define KVM_VCPU_PREEMPTED (1 << 0)
#define KVM_VCPU_FLUSH_TLB (1 << 1)
#define KVM_CPUID_SIGNATURE 0x40000000
#define KVM_CPUID_FEATURES 0x40000001
#define KVM_FEATURE_CLOCKSOURCE2 3
#define KVM_FEATURE_STEAL_TIME 5
#define KVM_FEATURE_PV_UNHALT 7
#define MSR_KVM_WALL_CLOCK_NEW 0x4b564d00
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define MSR_KVM_STEAL_TIME 0x4b564d03
#define KVM_MSR_ENABLED 1

/* -- MSRs ------------------------------------------------------------------------------------ */

#define MSR_FS_BASE 0xc0000100
#define MSR_GS_BASE 0xc0000101
#define MSR_KERNEL_GS_BASE 0xc0000102
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_CSTAR 0xc0000083
#define MSR_SYSCALL_MASK 0xc0000084
#define MSR_IA32_SYSENTER_CS 0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176
#define MSR_IA32_APICBASE 0x1b
#define X2APIC_ENABLE (1UL << 10)
#define MSR_X2APIC_ICR 0x830

/* -- the per-CPU area ----------------------------------------------------------------------- */

struct pvgen_percpu {
	struct pvgen_percpu *self;
	u32 cpu_number;
	u32 online;
	struct vcpu_info *xen_vcpu;
	unsigned long xen_cr3;
	unsigned long xen_current_cr3;
	unsigned long xen_cr0_value;
	u32 lazy_mode;
	u32 pad0;
	void *lazy_mmu_task;
	s32 kicker_port;
	s32 timer_port;
	u64 upcalls;
	u64 events;
	u64 kicks;
	unsigned long rsp_scratch;
	unsigned long top_of_stack;
	u8 pad1[128 - 112];
	struct vcpu_info xen_vcpu_info __attribute__((aligned(64)));
	struct vcpu_runstate_info xen_runstate __attribute__((aligned(64)));
	struct kvm_steal_time steal_time __attribute__((aligned(64)));
	struct pvclock_vcpu_time_info hv_clock __attribute__((aligned(64)));
	struct x86_hw_tss tss __attribute__((aligned(128)));
	struct desc_struct gdt[GDT_ENTRIES] __attribute__((aligned(128)));
	u32 port_events[64];
} __attribute__((aligned(PAGE_SIZE)));

extern struct pvgen_percpu pvgen_percpu[NR_CPUS];
extern unsigned long __per_cpu_offset[NR_CPUS];

#define this_cpu_read_8(off) ({ u64 __v; asm volatile("movq %%gs:%c1, %0" : "=r"(__v) : "i"(off)); __v; })
#define this_cpu_write_8(off, v) asm volatile("movq %0, %%gs:%c1" : : "r"((u64)(v)), "i"(off) : "memory")
#define this_cpu_read_4(off) ({ u32 __v; asm volatile("movl %%gs:%c1, %0" : "=r"(__v) : "i"(off)); __v; })
#define this_cpu_write_4(off, v) asm volatile("movl %0, %%gs:%c1" : : "r"((u32)(v)), "i"(off) : "memory")

static inline struct pvgen_percpu *this_cpu(void)
{
	return (struct pvgen_percpu *)this_cpu_read_8(PCPU_SELF);
}

static inline int smp_processor_id(void)
{
	return (int)this_cpu_read_4(PCPU_CPU_NUMBER);
}

static inline struct pvgen_percpu *per_cpu_area(int cpu)
{
	return (struct pvgen_percpu *)__per_cpu_offset[cpu];
}

/* -- native instructions used across the library ---------------------------------------------- */

static inline unsigned long native_save_fl(void)
{
	unsigned long flags;
	asm volatile("pushfq; popq %0" : "=rm"(flags) : : "memory");
	return flags;
}

static inline void native_restore_fl(unsigned long flags)
{
	asm volatile("pushq %0; popfq" : : "g"(flags) : "memory", "cc");
}

static inline void native_irq_disable(void)
{
	asm volatile("cli" : : : "memory");
}

static inline void native_irq_enable(void)
{
	asm volatile("sti" : : : "memory");
}

static inline void native_cpuid_raw(u32 *eax, u32 *ebx, u32 *ecx, u32 *edx)
{
	asm volatile("cpuid" : "=a"(*eax), "=b"(*ebx), "=c"(*ecx), "=d"(*edx) : "0"(*eax), "2"(*ecx) : "memory");
}

static inline u64 native_rdtsc(void)
{
	u32 low, high;
	asm volatile("rdtsc" : "=a"(low), "=d"(high));
	return ((u64)high << 32) | low;
}

static inline u64 native_rdmsr(unsigned int msr)
{
	u32 low, high;
	asm volatile("rdmsr" : "=a"(low), "=d"(high) : "c"(msr));
	return ((u64)high << 32) | low;
}

static inline void native_wrmsr(unsigned int msr, u64 value)
{
	asm volatile("wrmsr" : : "c"(msr), "a"((u32)value), "d"((u32)(value >> 32)) : "memory");
}

static inline void cpu_relax(void)
{
	asm volatile("pause" ::: "memory");
}

/* pvclock_clocksource_read: the version-protected read of a pvclock_vcpu_time_info. */
static inline u64 pvclock_scale_delta(u64 delta, u32 mul, int shift)
{
	if (shift < 0)
		delta >>= -shift;
	else
		delta <<= shift;
	return (u64)(((unsigned __int128)delta * mul) >> 32);
}

static inline u64 pvclock_read(const volatile struct pvclock_vcpu_time_info *src)
{
	u32 version;
	u64 ns;
	do {
		version = src->version;
		barrier();
		ns = src->system_time + pvclock_scale_delta(native_rdtsc() - src->tsc_timestamp,
							     src->tsc_to_system_mul, src->tsc_shift);
		barrier();
	} while ((version & 1) || version != src->version);
	return ns;
}

/* -- shared helpers (defined in the library) ------------------------------------------------- */

void pvgen_percpu_setup(int cpu);
unsigned long pvgen_get_free_page(void);
void pvgen_free_page(unsigned long page);

#endif /* __ASSEMBLY__ */
#endif /* PVGEN_GUEST_H */
