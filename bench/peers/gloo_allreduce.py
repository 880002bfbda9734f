"""The torch.distributed (gloo) side of bench/allreduce: in-place float32 sum-allreduce over the
same sizes, one process per rank on loopback. Rank 0 prints lines in allreduce_main.cc's format."""
import os, sys, time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def iterations(nbytes):
    return 200 if nbytes <= 1 << 20 else 20 if nbytes <= 16 << 20 else 5


def run(rank, world, port, max_bytes):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    nbytes = 4096
    while nbytes <= max_bytes:
        t = torch.ones(nbytes // 4)
        iters = iterations(nbytes)
        dist.all_reduce(t)
        total = 0.0
        for _ in range(3):
            dist.barrier()
            start = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(t)
            total += time.perf_counter() - start
        if rank == 0:
            sec = total / (3 * iters)
            algbw = nbytes / sec / 1e9
            print(f"impl=gloo bytes={nbytes} ranks={world} us={sec * 1e6:.1f} algbw_GBps={algbw:.3f} "
                  f"busbw_GBps={algbw * 2 * (world - 1) / world:.3f}", flush=True)
        nbytes *= 4
    dist.destroy_process_group()


if __name__ == "__main__":
    world, port, max_bytes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    mp.spawn(run, args=(world, port, max_bytes), nprocs=world)
