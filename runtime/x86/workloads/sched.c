/*
 * A scheduler-like path: pick the runnable task with the smallest virtual runtime and
 * charge it a slice, with interrupts saved, disabled and restored around each update,
 * as the kernel does around its runqueue lock.
 */
#include "workload.h"

#define TASKS 16
#define ROUNDS 400

struct task {
	unsigned long vruntime;
	unsigned long weight;
	unsigned long runs;
};

static struct task tasks[TASKS];

static unsigned int pick_next(void)
{
	unsigned int best = 0;
	for (unsigned int i = 1; i < TASKS; i++)
		if (tasks[i].vruntime < tasks[best].vruntime)
			best = i;
	return best;
}

WORKLOAD_ENTRY
{
	unsigned long seed = 0x9e3779b97f4a7c15UL, checksum = 0;

	for (unsigned int i = 0; i < TASKS; i++) {
		tasks[i].weight = 1024 + 64 * i;
		tasks[i].vruntime = i * 3;
		tasks[i].runs = 0;
	}
	for (unsigned int round = 0; round < ROUNDS; round++) {
		unsigned long flags = pv_save_fl();
		pv_irq_disable();
		unsigned int next = pick_next();
		seed = mix(seed);
		tasks[next].vruntime += (seed & 0xfff) * 1024 / tasks[next].weight + 1;
		tasks[next].runs++;
		pv_restore_fl(flags);
		checksum = checksum * 31 + next;
	}
	for (unsigned int i = 0; i < TASKS; i++)
		checksum += tasks[i].runs * (i + 1);
	return checksum;
}
