"""The PyTorch DDP (gloo) side of bench/ddp_throughput: the model, batch per rank, optimizer and
threads per rank of train_throughput_allround under mpirun, with DistributedDataParallel over
gloo on loopback. Rank 0 prints samples_per_s=X (all ranks' examples)."""
import os, sys, time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.argv, ARGS = sys.argv[:1], sys.argv[1:]
HERE = os.path.dirname(os.path.abspath(__file__))


def run(rank, world, port, model_name, batch, steps, warmup, threads, data):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sys.path.insert(0, HERE)
    import torch_models as ns
    n = batch * (steps + warmup) * world
    x = ns.idx(f"{data}/train-images-idx3-ubyte.gz")[:n].float().div(255).sub(0.2860).div(0.3530).unsqueeze(1)
    y = ns.idx(f"{data}/train-labels-idx1-ubyte.gz")[:n].long()
    torch.manual_seed(1)
    model = DDP({"simple_cnn": ns.SimpleCNN, "fedavg_cnn": ns.FedAvgCNN}[model_name]())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[rank::world]

    def train(first, count):
        for s in range(first, first + count):
            ib = order[s * batch:(s + 1) * batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(x.index_select(0, ib)), y.index_select(0, ib))
            loss.item()
            loss.backward()
            opt.step()

    train(0, warmup)
    dist.barrier()
    t0 = time.perf_counter()
    train(warmup, steps)
    dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        print(f"samples_per_s={batch * steps * world / dt:.1f} steps={steps} seconds={dt:.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    world, port, model_name, batch, steps, warmup, threads, data = ARGS
    mp.spawn(run, args=(int(world), int(port), model_name, int(batch), int(steps), int(warmup), int(threads), data),
             nprocs=int(world))
