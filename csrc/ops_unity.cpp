// The op schemas, the CPU registrations and their small helpers compiled as one
// translation unit. Each of these files is mostly parsing of torch's headers
// (about 10 s of CPU each, torch/library.h above all) around a little code, so
// one unit parses them once: 50 s of CPU as five files, 11 s as one
// (docs/benchmarks.md, build). The files stay separate in the source; setup.py
// compiles this file instead of them. The kernels (lif_cpu_<dtype>.cpp) stay
// in their own units so the build runs them in parallel.
#include "lif_tuning.cpp"
#include "lif_common.cpp"
#include "spike_pack.cpp"
#include "lif_cpu.cpp"
#include "ops.cpp"
