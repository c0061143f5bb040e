/*
 * A context-switch-like path: for each switch, enter the lazy CPU mode, load the next
 * task's kernel stack pointer and address space, leave the lazy mode, then return to the
 * next task through the entry code's exit path (SWAPGS and INTERRUPT_RETURN in switch.S).
 */
#include "workload.h"

#define SWITCHES 200

struct task_struct {
	unsigned long sp0;
	unsigned long cr3;
	unsigned long ticks;
};

static struct task_struct task_list[4];
extern unsigned long exit_to_task(unsigned long value);

WORKLOAD_ENTRY
{
	unsigned long checksum = 0, seed = 99;
	unsigned long old_root = pv_read_cr3();
	struct task_struct *prev = &task_list[0];

	for (unsigned int i = 0; i < 4; i++) {
		task_list[i].sp0 = 0xffffc90000004000UL + i * 0x4000;
		task_list[i].cr3 = old_root;
	}
	for (unsigned int i = 0; i < SWITCHES; i++) {
		struct task_struct *next = &task_list[(i * 3 + 1) & 3];
		seed = mix(seed);
		pv_start_context_switch((struct task_struct *)prev);
		pv_load_sp0(next->sp0);
		if (next->cr3 != pv_read_cr3())
			pv_write_cr3(next->cr3);
		pv_end_context_switch((struct task_struct *)next);
		next->ticks += exit_to_task(seed & 0xffff);
		checksum += next->ticks ^ next->sp0;
		prev = next;
	}
	return checksum;
}
