#ifndef ALLROUND_ALGORITHMS_COMPUTE_THREADS_H_
#define ALLROUND_ALGORITHMS_COMPUTE_THREADS_H_

// How many threads one training thread's tensor math may use. LibTorch's setting
// (at::set_num_threads) sizes its own intra-op pool but not the BLAS library under it: Debian's
// LibTorch calls OpenBLAS (pthreads build), whose pool is sized from the machine's cores and whose
// idle workers spin in sched_yield. With two sites training side by side on 2 cores, each GEMM
// then waited on pool threads fighting the other trainer for the same cores; bench/fedavg_niid's
// rounds took 2.5 times as long (42 s against 17 s for 1 round of 4 epochs). mpirun ranks sharing
// cores are in the same position (not measured).
// Sizing OpenBLAS's pool with LibTorch's also makes a run's floating-point sums depend on the job's
// `threads` rather than on the machine's core count.

namespace allround {

// Sets LibTorch's intra-op threads and, where the process has OpenBLAS loaded, OpenBLAS's threads
// to `threads`. Process-wide. Returns whether OpenBLAS was found and set. `threads` <= 0 (the job's
// "LibTorch's default") changes nothing and returns false.
bool SetComputeThreads(int threads);

// For GPU training: `on` makes LibTorch use deterministic kernels (cuDNN's deterministic
// algorithms without autotuning, cuBLAS's fixed workspace, the deterministic variant of ops that
// have one) and warn, naming the op, where an op has none. Left off, cuDNN's and the atomics-based
// kernels make two runs of one seed drift apart from the first steps (seen on an H200: three runs
// of one epoch gave test losses 0.3683, 0.3675, 0.3643). Process-wide; call before any GPU work,
// since cuBLAS reads its workspace setting when its first handle is made.
void UseDeterministicKernels(bool on);

}  // namespace allround

#endif  // ALLROUND_ALGORITHMS_COMPUTE_THREADS_H_
