"""The peer of bench/dp's example-level part: DP-SGD with Opacus (PyPI, 1.4 for Debian's torch 1.13)
on Fashion-MNIST, the same model (TanhCNN), batch (Poisson-sampled at rate B / N), clip, noise,
learning rate, momentum and epochs as allround's run. Prints key=value lines: acc, eps (Opacus's
own RDP accountant at --delta), samples_per_s (training only), seconds.

    opacus_dpsgd.py --data DIR --batch 2048 --clip 0.12 --noise 2.15 --lr 4 --momentum 0.9 --epochs 40"""
import argparse
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import idx, TanhCNN  # noqa: E402

warnings.filterwarnings("ignore")
ap = argparse.ArgumentParser()
ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
ap.add_argument("--batch", type=int, default=2048)
ap.add_argument("--clip", type=float, default=0.12)
ap.add_argument("--noise", type=float, default=2.15)
ap.add_argument("--lr", type=float, default=4.0)
ap.add_argument("--momentum", type=float, default=0.9)
ap.add_argument("--epochs", type=int, default=40)
ap.add_argument("--delta", type=float, default=1e-5)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--train-limit", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
from opacus import PrivacyEngine  # noqa: E402

norm = lambda t: t.float().div(255).sub(0.2860).div(0.3530).unsqueeze(1).contiguous()  # noqa: E731
x, y = norm(idx(f"{a.data}/train-images-idx3-ubyte.gz")), idx(f"{a.data}/train-labels-idx1-ubyte.gz").long()
if a.train_limit:
    x, y = x[:a.train_limit], y[:a.train_limit]
tx, ty = norm(idx(f"{a.data}/t10k-images-idx3-ubyte.gz")), idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").long()
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=a.batch)
model = TanhCNN()
opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
engine = PrivacyEngine(accountant="rdp")
model, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=a.noise,
                                         max_grad_norm=a.clip, poisson_sampling=True)
seen, train_s = 0, 0.0
for epoch in range(a.epochs):
    model.train()
    start = time.perf_counter()
    for xb, yb in loader:
        opt.zero_grad()
        if len(xb):
            F.cross_entropy(model(xb), yb).backward()
        opt.step()
        seen += len(xb)
    train_s += time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        acc = sum((model(tx[i:i + 2000]).argmax(1) == ty[i:i + 2000]).sum().item() for i in range(0, len(ty), 2000)) / len(ty)
    print(f"epoch {epoch + 1} acc {acc:.4f} eps {engine.get_epsilon(a.delta):.3f}", file=sys.stderr, flush=True)
print(f"acc={acc:.4f}")
print(f"eps={engine.get_epsilon(a.delta):.4f}")
print(f"samples_per_s={seen / train_s:.1f}")
print(f"seconds={train_s:.1f}")
