"""FedAvg in plain PyTorch, next to a run of allround's coordinator and sites from the same start.
  prepare DIR N SITES: writes DIR/init.safetensors (SimpleCNN under torch.manual_seed(1), as a PyTorch
      user would start) and DIR/partition.txt (the first N training examples cut into SITES parts of
      different sizes, numpy seed 42: partition.file's format, one line of indices per site).
  check DIR ROUNDS EPOCHS LR: replays the run in PyTorch: each round every site starts from the global
      model with a fresh SGD (lr LR, momentum 0.9, weight decay 1e-5), takes EPOCHS full-batch steps
      on its examples (pixels in [0, 1]), and the new global model is the example-weighted mean. Each
      global model must equal the coordinator's (DIR/models/version-R.safetensors) to 1e-4, where the
      model moves by more than 100 times that: with full batches the order of examples plays no part,
      so nothing but float rounding may differ."""
import os, sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench", "peers"))
sys.path.insert(0, HERE)
from torch_models import idx, SimpleCNN  # noqa: E402
import safetensors_np  # noqa: E402  (numpy only: no PyPI package needed)


def load_file(path):
    return {k: torch.from_numpy(v) for k, v in safetensors_np.load_file(path).items()}


def save_file(tensors, path):
    safetensors_np.save_file({k: v.detach().cpu().numpy() for k, v in tensors.items()}, path)

DATA = "/usr/share/datasets/fashion-mnist"
cmd, d = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
if cmd == "prepare":
    n, sites = int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in SimpleCNN().state_dict().items()}, f"{d}/init.safetensors")
    rng = np.random.default_rng(42)
    cuts = np.sort(rng.choice(np.arange(1, n), sites - 1, replace=False))
    with open(f"{d}/partition.txt", "w") as f:
        f.write("# site i: its training example indices\n")
        for part in np.split(rng.permutation(n), cuts):
            f.write(",".join(str(i) for i in part) + "\n")
    sys.exit(0)

rounds, epochs, lr = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
x = idx(f"{DATA}/train-images-idx3-ubyte.gz").float().div(255).unsqueeze(1)
y = idx(f"{DATA}/train-labels-idx1-ubyte.gz").long()
parts = [torch.tensor([int(i) for i in line.split(",")]) for line in open(f"{d}/partition.txt")
         if not line.startswith("#")]
init = load_file(f"{d}/init.safetensors")
global_state, worst_all = init, 0.0
for r in range(1, rounds + 1):
    states, counts = [], []
    for part in parts:
        model = SimpleCNN()
        model.load_state_dict(global_state)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(model(x[part]), y[part]).backward()
            opt.step()
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        counts.append(len(part))
    total = sum(counts)
    global_state = {k: sum(s[k].double() * (c / total) for s, c in zip(states, counts)).float() for k in states[0]}
    ours = load_file(f"{d}/models/version-{r}.safetensors")
    worst = max((ours["model/" + k] - v).abs().max().item() for k, v in global_state.items())
    moved = max((v - init[k]).abs().max().item() for k, v in global_state.items())
    print(f"round {r}: sites hold {counts} examples; max |allround - PyTorch| = {worst:.2e} "
          f"(the model moved {moved:.2e} from its start)")
    worst_all = max(worst_all, worst)
assert worst_all < 1e-4, worst_all
assert moved > 1e-2, moved  # a model that hardly moves would hide a wrong weighting or a wrong start
