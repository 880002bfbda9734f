"""The Flower side of bench/federated_overhead: FedAvg on Fashion-MNIST with Flower's simulation
engine (run_simulation, Ray backend: the way Flower documents many clients on one machine), the
same model, IID shards, local training (SGD lr 0.01 momentum 0.9 weight decay 1e-5, 1 epoch,
batch B) and centralized evaluation each round as the allround run. Prints the seconds between
the evaluations after round 1 and after the last round divided by (rounds - 1) as s_per_round=X,
and the final accuracy=X."""
import argparse, os, sys, time, json, warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

p = argparse.ArgumentParser()
p.add_argument("--sites", type=int, default=10)
p.add_argument("--sample", type=int, default=10)
p.add_argument("--rounds", type=int, default=20)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--per-site", type=int, default=0, help="examples per site (0: an equal share of all)")
p.add_argument("--model", default="simple_cnn")
p.add_argument("--cpus", type=int, default=2, help="clients trained at once (one CPU each)")
p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
p.add_argument("--times", default="/tmp/flower_times.json")
a = p.parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.common import Context, ndarrays_to_parameters  # noqa: E402
from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from torch_models import idx, SimpleCNN, FedAvgCNN  # noqa: E402

MODELS = {"simple_cnn": SimpleCNN, "fedavg_cnn": FedAvgCNN}
_cache = {}


def data():
    """Fashion-MNIST, normalized as allround does; loaded once per process (per Ray actor)."""
    if "x" not in _cache:
        norm = lambda t: t.float().div(255).sub(0.2860).div(0.3530).unsqueeze(1).contiguous()
        _cache["x"] = norm(idx(f"{a.data}/train-images-idx3-ubyte.gz"))
        _cache["y"] = idx(f"{a.data}/train-labels-idx1-ubyte.gz").long()
        _cache["tx"] = norm(idx(f"{a.data}/t10k-images-idx3-ubyte.gz"))
        _cache["ty"] = idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").long()
        order = torch.randperm(len(_cache["y"]), generator=torch.Generator().manual_seed(1))
        per = a.per_site or len(order) // a.sites
        _cache["shards"] = [order[i * per:(i + 1) * per] for i in range(a.sites)]
    return _cache


def get_weights(model):
    return [v.detach().cpu().numpy() for v in model.state_dict().values()]


def set_weights(model, weights):
    model.load_state_dict({k: torch.from_numpy(np.copy(w)) for k, w in zip(model.state_dict().keys(), weights)})


class Client(NumPyClient):
    def __init__(self, pid):
        self.pid = pid

    def fit(self, parameters, config):
        torch.set_num_threads(1)
        d = data()
        shard = d["shards"][self.pid]
        x, y = d["x"][shard], d["y"][shard]
        model = MODELS[a.model]()
        set_weights(model, parameters)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
        order = torch.randperm(len(y))
        for s in range(0, len(y), a.batch):
            b = order[s:s + a.batch]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        return get_weights(model), len(y), {}


def client_fn(context: Context):
    return Client(int(context.node_config["partition-id"])).to_client()


times = []


def evaluate(server_round, parameters, config):
    torch.set_num_threads(1)
    d = data()
    model = MODELS[a.model]()
    set_weights(model, parameters)
    correct = 0
    with torch.no_grad():
        for s in range(0, len(d["ty"]), 1000):
            correct += (model(d["tx"][s:s + 1000]).argmax(1) == d["ty"][s:s + 1000]).sum().item()
    acc = correct / len(d["ty"])
    times.append((server_round, time.time(), acc))
    with open(a.times, "w") as f:
        json.dump(times, f)
    return 0.0, {"accuracy": acc}


def server_fn(context: Context):
    torch.manual_seed(1)
    strategy = FedAvg(fraction_fit=a.sample / a.sites, min_fit_clients=a.sample, min_available_clients=a.sites,
                      fraction_evaluate=0.0, min_evaluate_clients=0, evaluate_fn=evaluate,
                      initial_parameters=ndarrays_to_parameters(get_weights(MODELS[a.model]())))
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=a.rounds))


if __name__ == "__main__":
    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=a.sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": a.cpus, "include_dashboard": False}})
    with open(a.times) as f:
        t = json.load(f)
    after = {r: (ts, acc) for r, ts, acc in t}
    per_round = (after[a.rounds][0] - after[1][0]) / (a.rounds - 1)
    print(f"s_per_round={per_round:.3f}")
    print(f"accuracy={after[a.rounds][1]:.4f}")
