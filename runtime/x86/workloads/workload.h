/*
 * Shared by pvgen's kernel-like workloads. Each workload is built twice from the same
 * source: paravirt mode (the generated wrappers make indirect calls through pv_ops, with
 * patch-site records) and native mode (-DPVGEN_NATIVE: the native instructions inline).
 * The entry function's return value is the run's result; it must not depend on the mode
 * or the hypervisor.
 */
#ifndef PVGEN_WORKLOAD_H
#define PVGEN_WORKLOAD_H

#include "pvops.h"

#define WORKLOAD_ENTRY __attribute__((used, noinline)) unsigned long workload_entry(void)

/* A cheap pseudo-random step: the "real work" between pv ops is not optimised away. */
static inline unsigned long mix(unsigned long x)
{
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}

#endif
