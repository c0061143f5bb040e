/*
 * Queued-spinlock slow paths and the paravirt unlock (qspinlock.c, qspinlock_paravirt.h),
 * for the layout the kernel uses: a locked byte, a pending byte and a 16-bit tail.
 *
 * The native slow path is test-and-test-and-set (no MCS queue: the model runs one CPU).
 * The paravirt one spins a bounded time, then records itself as the lock's waiter, marks
 * the lock byte _Q_SLOW_VAL and waits (pv_wait); the unlocker that finds _Q_SLOW_VAL
 * looks the waiter up and kicks it (pv_kick). That is Linux's lock-holder hashing.
 */
#include "guest.h"

struct qspinlock {
	union {
		u32 val;
		struct {
			u8 locked;
			u8 pending;
		};
		struct {
			u16 locked_pending;
			u16 tail;
		};
	};
};

#define _Q_LOCKED_VAL 1
#define _Q_SLOW_VAL 3
#define SPIN_THRESHOLD (1 << 15)

static int try_lock(struct qspinlock *lock)
{
	u8 expected = 0;
	return READ_ONCE(lock->locked) == 0 &&
	       __atomic_compare_exchange_n(&lock->locked, &expected, _Q_LOCKED_VAL, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

void native_queued_spin_lock_slowpath(struct qspinlock *lock, u32 val)
{
	(void)val;
	while (!try_lock(lock))
		while (READ_ONCE(lock->locked))
			cpu_relax();
}

/* The waiter table: which CPU waits on which lock (Linux hashes the lock address). */
#define PV_HASH_SIZE (NR_CPUS * 4)
static struct {
	struct qspinlock *lock;
	int cpu;
} pv_lock_hash[PV_HASH_SIZE];

static void pv_hash(struct qspinlock *lock, int cpu)
{
	unsigned int start = (unsigned int)(((unsigned long)lock >> 2) % PV_HASH_SIZE);
	for (unsigned int i = 0; i < PV_HASH_SIZE; i++) {
		unsigned int slot = (start + i) % PV_HASH_SIZE;
		struct qspinlock *none = 0;
		if (__atomic_compare_exchange_n(&pv_lock_hash[slot].lock, &none, lock, 0, __ATOMIC_SEQ_CST,
						__ATOMIC_RELAXED)) {
			pv_lock_hash[slot].cpu = cpu;
			return;
		}
	}
	BUG(); /* more waiters than CPUs x 4 */
}

static int pv_unhash(struct qspinlock *lock)
{
	unsigned int start = (unsigned int)(((unsigned long)lock >> 2) % PV_HASH_SIZE);
	for (unsigned int i = 0; i < PV_HASH_SIZE; i++) {
		unsigned int slot = (start + i) % PV_HASH_SIZE;
		if (READ_ONCE(pv_lock_hash[slot].lock) == lock) {
			int cpu = pv_lock_hash[slot].cpu;
			WRITE_ONCE(pv_lock_hash[slot].lock, 0);
			return cpu;
		}
	}
	BUG();
	return -1;
}

void __pv_queued_spin_lock_slowpath(struct qspinlock *lock, u32 val)
{
	(void)val;
	for (;;) {
		for (int loop = SPIN_THRESHOLD; loop; loop--) {
			if (try_lock(lock))
				return;
			cpu_relax();
		}
		/* Ask the holder to kick us: record ourselves, then mark the lock slow. */
		pv_hash(lock, smp_processor_id());
		u8 expected = _Q_LOCKED_VAL;
		if (!__atomic_compare_exchange_n(&lock->locked, &expected, _Q_SLOW_VAL, 0, __ATOMIC_SEQ_CST,
						 __ATOMIC_RELAXED)) {
			/* Released meanwhile (or already slow): take our entry back and retry. */
			if (expected == 0) {
				pv_unhash(lock);
				continue;
			}
		}
		pv_wait(&lock->locked, _Q_SLOW_VAL);
	}
}

static void __pv_queued_spin_unlock_slowpath(struct qspinlock *lock, u8 locked)
{
	BUG_ON(locked != _Q_SLOW_VAL);
	int cpu = pv_unhash(lock);
	__atomic_store_n(&lock->locked, 0, __ATOMIC_RELEASE);
	pv_kick(cpu);
}

void __pv_queued_spin_unlock(struct qspinlock *lock)
{
	u8 locked = _Q_LOCKED_VAL;
	if (__atomic_compare_exchange_n(&lock->locked, &locked, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
		return;
	__pv_queued_spin_unlock_slowpath(lock, locked);
}
