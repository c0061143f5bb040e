/*
 * A lock-protected update: take a byte lock with the atomic fast path, update a shared
 * counter and a small histogram, and release it with the paravirtualised unlock; when
 * the lock looks contended, ask whether its holder's vCPU is preempted.
 */
#include "workload.h"

#define ITERATIONS 500

struct qspinlock {
	unsigned char locked;
	unsigned char pending;
	unsigned short tail;
};

static struct qspinlock lock;
static unsigned long counter;
static unsigned long histogram[8];

static inline void spin_lock(struct qspinlock *l)
{
	unsigned char expected = 0;
	while (!__atomic_compare_exchange_n(&l->locked, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
		expected = 0;
}

WORKLOAD_ENTRY
{
	unsigned long seed = 7, preempted = 0;

	for (unsigned int i = 0; i < ITERATIONS; i++) {
		spin_lock(&lock);
		seed = mix(seed);
		counter += seed & 0xff;
		histogram[seed & 7]++;
		pv_queued_spin_unlock(&lock);
		if ((seed & 15) == 0)
			preempted += pv_vcpu_is_preempted(seed & 3);
	}
	return counter + histogram[3] * 1000 + preempted;
}
