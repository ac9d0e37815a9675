// Which CPU kernels a build compiles more than once, one copy per instruction
// set, with nothing else included: lif_cpu_half.cpp reads it before any header
// to decide whether it compiles anything at all.
#pragma once

// x86-64 with GCC or Clang: the group loops are built for AVX-512, AVX2+FMA and
// the baseline ISA, and cpu_isa() picks one at run time (lif_cpu_kernels.h).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TCL_CPU_MULTI_ISA 1
#else
#define TCL_CPU_MULTI_ISA 0
#endif
