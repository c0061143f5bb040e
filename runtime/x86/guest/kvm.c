/*
 * KVM guest (kvm.c, kvmclock.c): detection, steal time and kvmclock registered by MSR,
 * the pv spinlock hooks (halt until kicked, KVM_HC_KICK_CPU) and the TLB flush that
 * skips preempted vCPUs. Hypercalls are `vmcall` with the number in %rax and arguments
 * in %rbx, %rcx, %rdx, %rsi.
 */
#include "guest.h"

extern void native_flush_tlb_others(const struct cpumask *cpus, const struct flush_tlb_info *info);

static u64 kvm_sched_clock_offset;
static u32 kvm_features;

static inline long kvm_hypercall2(unsigned int nr, unsigned long p1, unsigned long p2)
{
	long ret;
	asm volatile("vmcall" : "=a"(ret) : "a"(nr), "b"(p1), "c"(p2) : "memory");
	return ret;
}

static int kvm_para_has_feature(unsigned int feature)
{
	return (kvm_features >> feature) & 1;
}

static u64 kvm_clock_read(void)
{
	return pvclock_read(&this_cpu()->hv_clock);
}

/*
 * Called once KVM is detected: registers this CPU's steal-time area and kvmclock page
 * (guest-physical addresses, enable bit 0). Returns the feature bits of leaf 0x40000001.
 */
unsigned long kvm_guest_init(void)
{
	u32 eax = KVM_CPUID_SIGNATURE, ebx, ecx = 0, edx;
	struct pvgen_percpu *pc = this_cpu();

	native_cpuid_raw(&eax, &ebx, &ecx, &edx);
	if (ebx != 0x4b4d564b || ecx != 0x564b4d56 || edx != 0x4d) /* "KVMKVMKVM\0\0\0" */
		return 0;
	eax = KVM_CPUID_FEATURES;
	ecx = 0;
	native_cpuid_raw(&eax, &ebx, &ecx, &edx);
	kvm_features = eax;
	if (kvm_para_has_feature(KVM_FEATURE_STEAL_TIME))
		native_wrmsr(MSR_KVM_STEAL_TIME, __pa(&pc->steal_time) | KVM_MSR_ENABLED);
	if (kvm_para_has_feature(KVM_FEATURE_CLOCKSOURCE2)) {
		native_wrmsr(MSR_KVM_SYSTEM_TIME_NEW, __pa(&pc->hv_clock) | 1);
		kvm_sched_clock_offset = kvm_clock_read();
	}
	return kvm_features;
}

unsigned long long kvm_sched_clock_read(void)
{
	return kvm_clock_read() - kvm_sched_clock_offset;
}

unsigned long long kvm_steal_clock(int cpu)
{
	volatile struct kvm_steal_time *src = &per_cpu_area(cpu)->steal_time;
	u32 version;
	u64 steal;
	do {
		version = src->version;
		barrier();
		steal = src->steal;
		barrier();
	} while ((version & 1) || version != src->version);
	return steal;
}

/* Kick the vCPU halted in kvm_wait (KVM_HC_KICK_CPU with the target's APIC id). */
void kvm_kick_cpu(int cpu)
{
	unsigned long apicid = (unsigned long)cpu; /* x86_cpu_to_apicid: the identity here */
	kvm_hypercall2(KVM_HC_KICK_CPU, 0, apicid);
}

/* Halt until kicked or interrupted, unless the lock byte already changed. */
void kvm_wait(u8 *ptr, u8 val)
{
	if (!(native_save_fl() & X86_EFLAGS_IF)) {
		if (READ_ONCE(*ptr) == val)
			asm volatile("hlt" ::: "memory");
	} else {
		native_irq_disable();
		if (READ_ONCE(*ptr) == val)
			asm volatile("sti; hlt" ::: "memory"); /* safe_halt: sti's shadow covers hlt */
		native_irq_enable();
	}
}

/* Preempted vCPUs flush on their next entry (KVM_VCPU_FLUSH_TLB) instead of taking an IPI. */
void kvm_flush_tlb_others(const struct cpumask *cpumask, const struct flush_tlb_info *info)
{
	struct cpumask flushmask = *cpumask;
	for (int cpu = 0; cpu < NR_CPUS; cpu++) {
		if (!(flushmask.bits[0] & (1UL << cpu)))
			continue;
		volatile struct kvm_steal_time *src = &per_cpu_area(cpu)->steal_time;
		u8 state = src->preempted;
		if (state & KVM_VCPU_PREEMPTED) {
			if (__atomic_compare_exchange_n(&src->preempted, &state, (u8)(state | KVM_VCPU_FLUSH_TLB), 0,
							__ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
				flushmask.bits[0] &= ~(1UL << cpu);
		}
	}
	native_flush_tlb_others(&flushmask, info);
}
