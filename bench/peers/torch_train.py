"""The PyTorch side of bench/train_throughput: the same model, data in memory, batch size,
optimizer and thread count as train_throughput_allround, in eager PyTorch (Debian's python3-torch).
Prints samples_per_s=X."""
import argparse, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--model", default="simple_cnn")
p.add_argument("--optimizer", default="sgd")
p.add_argument("--batch", type=int, default=64)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--warmup", type=int, default=30)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
p.add_argument("--device", default="cpu")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.set_num_interop_threads(1)


from torch_models import idx, SimpleCNN, FedAvgCNN  # noqa: E402


n = a.batch * (a.steps + a.warmup)
x = idx(f"{a.data}/train-images-idx3-ubyte.gz")[:n].float().div(255).sub(0.2860).div(0.3530).unsqueeze(1).contiguous()
y = idx(f"{a.data}/train-labels-idx1-ubyte.gz")[:n].long()
torch.manual_seed(1)
model = {"simple_cnn": SimpleCNN, "fedavg_cnn": FedAvgCNN}[a.model]().to(a.device)
x, y = x.to(a.device), y.to(a.device)
if a.optimizer == "sgd":
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
else:
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
order = torch.randperm(n).to(a.device)


def train(first, count):
    total = 0.0
    model.train()
    for s in range(first, first + count):
        idx_b = order[s * a.batch:(s + 1) * a.batch]
        xb, yb = x.index_select(0, idx_b), y.index_select(0, idx_b)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        total += loss.item()
        loss.backward()
        opt.step()
    return total / count


train(0, a.warmup)
t0 = time.perf_counter()
mean_loss = train(a.warmup, a.steps)
dt = time.perf_counter() - t0
print(f"samples_per_s={a.batch * a.steps / dt:.1f} steps={a.steps} seconds={dt:.3f} final_loss_mean={mean_loss:.4f}")
