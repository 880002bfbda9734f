"""The Flower side of bench/federated_overhead and bench/fedavg_niid: FedAvg (or FedProx) on
Fashion-MNIST with Flower's simulation engine (run_simulation, Ray backend: the way Flower documents
many clients on one machine), the same model, local training (SGD lr 0.01 (--lr) momentum 0.9 weight decay
1e-5, E epochs, batch B) and centralized evaluation each round as the allround run.
Partitions: `shards` (federated_overhead: IID shards of a permutation seeded 1, standardized pixels)
or NIID-Bench's as Flower's baseline (adap/flower baselines/niid_bench) draws them, with numpy
default_rng(--partition-seed, 42 there): `iid`, `dirichlet` (--beta) and `labels`
(--labels-per-site), with pixels in [0, 1] as its ToTensor gives them (--scale).
--seed S seeds each site's batch order from (S, round, site). --secagg K,T runs the rounds through
Flower's SecAgg+ workflow (SecAggPlusWorkflow on the server, secaggplus_mod on the clients, as
Flower's secure-aggregation example wires them) with each key shared K ways (K - 1 neighbours and
the site itself) and threshold T, Flower's default clipping and quantization.
--dp-noise Z --dp-clip C wraps the strategy in Flower's DifferentialPrivacyServerSideFixedClipping
(site-level DP with the noise at the server; bench/dp's site part). --engine inprocess drives
Flower's strategy objects (client manager, sampling, aggregation) round by round in this process
without Ray, for many sites where only accuracy is compared.
Prints each round's test accuracy and mean loss as round_accuracy=R:X and round_loss=R:X, the
seconds between the evaluations after round 1 and after the last round divided by (rounds - 1) as
s_per_round=X, and the final accuracy=X. --write-partition FILE and --write-init FILE write the
sites' examples (allround's partition.file format) and the initial global model (safetensors, for
model.init) and exit, so an allround run can start from the very same place (bench/fedavg_niid
--start flower)."""
import argparse, os, struct, sys, time, json, warnings

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
p.add_argument("--epochs", type=int, default=1, help="local epochs")
p.add_argument("--mu", type=float, default=0.0, help="FedProx proximal term (0: FedAvg)")
p.add_argument("--partition", default="shards", choices=["shards", "iid", "dirichlet", "labels"])
p.add_argument("--beta", type=float, default=0.5)
p.add_argument("--labels-per-site", type=int, default=2)
p.add_argument("--partition-seed", type=int, default=42)
p.add_argument("--seed", type=int, default=None,
               help="seed each site's batch order from (S, round, site) so a run can be repeated and its spread "
                    "over batch orders measured (default: torch's global generator in each Ray actor, as "
                    "Flower's baseline shuffles, which depends on which actor trained which site before)")
p.add_argument("--scale", default=None, choices=["unit", "standardize"],
               help="pixels (default: standardize for shards, unit for NIID-Bench's partitions)")
p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
p.add_argument("--secagg", metavar="K,T", default=None,
               help="Flower's SecAgg+ workflow with num_shares K and reconstruction_threshold T")
p.add_argument("--dp-noise", type=float, default=0.0,
               help="site-level DP: wrap the strategy in Flower's DifferentialPrivacyServerSideFixedClipping with "
                    "this noise multiplier (0: no DP)")
p.add_argument("--dp-clip", type=float, default=1.0, help="site-level DP: the clipping norm of the wrapper")
p.add_argument("--lr", type=float, default=0.01, help="the sites' SGD learning rate")
p.add_argument("--engine", default="simulation", choices=["simulation", "inprocess"],
               help="simulation: Flower's run_simulation (Ray); inprocess: Flower's strategy objects (client "
                    "manager, sampling, the DP wrapper's clipping and noise, FedAvg) driven round by round in this "
                    "process with the same client code, no transport: for accuracy comparisons with many sites, "
                    "where Ray's per-client cost (about 1 s here) would take hours")
p.add_argument("--times", default="/tmp/flower_times.json")
p.add_argument("--write-partition", metavar="FILE",
               help="write each site's example indices (allround's partition.file) and exit")
p.add_argument("--write-init", metavar="FILE", help="write the initial global model (safetensors) and exit")
a = p.parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_models import idx, SimpleCNN, FedAvgCNN  # noqa: E402

MODELS = {"simple_cnn": SimpleCNN, "fedavg_cnn": FedAvgCNN}
_cache = {}


def niid_bench_partition(y):
    """Each site's example indices as NIID-Bench's partitions in Flower's baseline
    (dataset_preparation.py there) draw them; `y` the training labels (numpy)."""
    prng = np.random.default_rng(a.partition_seed)
    n, classes = a.sites, int(y.max()) + 1
    if a.partition == "iid":
        return [torch.from_numpy(s) for s in np.array_split(prng.choice(len(y), len(y), replace=False), n)]
    if a.partition == "dirichlet":
        smallest = 0
        while smallest < 10:
            sites = [[] for _ in range(n)]
            for k in range(classes):
                idx_k = np.where(y == k)[0]
                prng.shuffle(idx_k)
                p = prng.dirichlet(np.repeat(a.beta, n))
                p = np.array([q * (len(s) < len(y) / n) for q, s in zip(p, sites)])
                cuts = (np.cumsum(p / p.sum()) * len(idx_k)).astype(int)[:-1]
                sites = [s + part.tolist() for s, part in zip(sites, np.split(idx_k, cuts))]
                smallest = min(len(s) for s in sites)
        return [torch.tensor(s, dtype=torch.long) for s in sites]
    holders, sets = [0] * classes, []
    for i in range(n):
        labels = [i % classes]
        holders[i % classes] += 1
        while len(labels) < a.labels_per_site:
            k = prng.choice(classes, 1)[0]
            if k not in labels:
                labels.append(k)
                holders[k] += 1
        sets.append(labels)
    sites = [[] for _ in range(n)]
    for k in range(classes):
        idx_k = np.where(y == k)[0]
        prng.shuffle(idx_k)
        parts = iter(np.array_split(idx_k, holders[k]))
        for i in range(n):
            if k in sets[i]:
                sites[i] += next(parts).tolist()
    _cache["sets"] = sets
    return [torch.tensor(s, dtype=torch.long) for s in sites]


def data():
    """Fashion-MNIST, loaded and partitioned once per process (per Ray actor)."""
    if "x" not in _cache:
        scale = a.scale or ("standardize" if a.partition == "shards" else "unit")
        if scale == "unit":
            norm = lambda t: t.float().div(255).unsqueeze(1).contiguous()
        else:
            norm = lambda t: t.float().div(255).sub(0.2860).div(0.3530).unsqueeze(1).contiguous()
        _cache["x"] = norm(idx(f"{a.data}/train-images-idx3-ubyte.gz"))
        _cache["y"] = idx(f"{a.data}/train-labels-idx1-ubyte.gz").long()
        _cache["tx"] = norm(idx(f"{a.data}/t10k-images-idx3-ubyte.gz"))
        _cache["ty"] = idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").long()
        if a.partition == "shards":
            order = torch.randperm(len(_cache["y"]), generator=torch.Generator().manual_seed(1))
            per = a.per_site or len(order) // a.sites
            _cache["shards"] = [order[i * per:(i + 1) * per] for i in range(a.sites)]
        else:
            _cache["shards"] = niid_bench_partition(_cache["y"].numpy())
    return _cache


def initial_model():
    torch.manual_seed(1)
    return MODELS[a.model]()


def write_safetensors(path, tensors):
    """float32 tensors as a safetensors file (the format's header, then the data), without the package."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        blob = t.detach().float().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


if a.write_partition or a.write_init:
    if a.write_partition:
        with open(a.write_partition, "w") as f:
            f.write(f"# {a.partition} partition of {a.sites} sites drawn as Flower's NIID-Bench baseline draws it "
                    f"(numpy seed {a.partition_seed}); line i: site i's training example indices\n")
            for shard in data()["shards"]:
                f.write(",".join(str(i) for i in shard.tolist()) + "\n")
    if a.write_init:
        write_safetensors(a.write_init, initial_model().state_dict())
    sys.exit(0)

from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.common import Context, ndarrays_to_parameters  # noqa: E402
from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


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
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-5)
        start = [p.detach().clone() for p in model.parameters()]
        gen = None
        if a.seed is not None:
            gen = torch.Generator().manual_seed((a.seed * 1_000_003 + int(config["round"])) * 1_000_003 + self.pid)
        for _ in range(a.epochs):
            order = torch.randperm(len(y), generator=gen)
            for s in range(0, len(y), a.batch):
                b = order[s:s + a.batch]
                opt.zero_grad()
                loss = F.cross_entropy(model(x[b]), y[b])
                if a.mu > 0:  # FedProx as Flower's baseline writes it: mu/2 * sum of squared norms
                    loss = loss + a.mu / 2 * sum((p - g).norm() ** 2 for p, g in zip(model.parameters(), start))
                loss.backward()
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
    correct, loss = 0, 0.0
    with torch.no_grad():
        for s in range(0, len(d["ty"]), 1000):
            logits, y = model(d["tx"][s:s + 1000]), d["ty"][s:s + 1000]
            correct += (logits.argmax(1) == y).sum().item()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
    acc, loss = correct / len(d["ty"]), loss / len(d["ty"])
    times.append((server_round, time.time(), acc, loss))
    with open(a.times, "w") as f:
        json.dump(times, f)
    return loss, {"accuracy": acc}


def server_fn(context: Context):
    strategy = FedAvg(fraction_fit=a.sample / a.sites, min_fit_clients=a.sample, min_available_clients=a.sites,
                      fraction_evaluate=0.0, min_evaluate_clients=0, evaluate_fn=evaluate,
                      on_fit_config_fn=lambda server_round: {"round": server_round},
                      initial_parameters=ndarrays_to_parameters(get_weights(initial_model())))
    if a.dp_noise > 0:
        # Flower's server-side fixed clipping: each update's delta clipped to --dp-clip, the
        # wrapped FedAvg's mean, then Gaussian noise of std z C / num_sampled_clients on it.
        from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping
        strategy = DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=a.dp_noise,
                                                              clipping_norm=a.dp_clip, num_sampled_clients=a.sample)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=a.rounds))


def secagg_apps():
    """Flower's SecAgg+ workflow around the same FedAvg strategy (the plain apps otherwise)."""
    if a.secagg is None:
        return ServerApp(server_fn=server_fn), ClientApp(client_fn=client_fn)
    from flwr.client.mod import secaggplus_mod
    from flwr.server import LegacyContext
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    shares, threshold = (int(v) for v in a.secagg.split(","))
    server = ServerApp()

    @server.main()
    def main(grid, context):
        components = server_fn(context)
        context = LegacyContext(context=context, config=components.config, strategy=components.strategy)
        DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold))(
            grid, context)

    return server, ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def run_inprocess():
    """The server loop of Flower's legacy Server.fit_round, without transport: the strategy's
    configure_fit samples from a SimpleClientManager of one proxy per site, each sampled site's
    Client.fit runs here, aggregate_fit combines (through the DP wrapper when asked), and
    the strategy's evaluate_fn evaluates the new global model."""
    from flwr.common import Code, FitRes, Status, parameters_to_ndarrays
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy

    class Proxy(ClientProxy):
        def get_properties(self, ins, timeout, group_id):
            raise NotImplementedError

        def get_parameters(self, ins, timeout, group_id):
            raise NotImplementedError

        def fit(self, ins, timeout, group_id):
            raise NotImplementedError

        def evaluate(self, ins, timeout, group_id):
            raise NotImplementedError

        def reconnect(self, ins, timeout, group_id):
            raise NotImplementedError

    if a.seed is not None:
        import random
        random.seed(a.seed)  # SimpleClientManager.sample draws with the random module
    manager = SimpleClientManager()
    for i in range(a.sites):
        manager.register(Proxy(str(i)))
    strategy = server_fn(None).strategy
    params = strategy.initialize_parameters(manager)
    strategy.evaluate(0, params)
    for r in range(1, a.rounds + 1):
        results = []
        for proxy, ins in strategy.configure_fit(r, params, manager):
            weights, n, metrics = Client(int(proxy.cid)).fit(parameters_to_ndarrays(ins.parameters), ins.config)
            results.append((proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), n, metrics)))
        new, _ = strategy.aggregate_fit(r, results, [])
        if new is not None:
            params = new
        strategy.evaluate(r, params)


if __name__ == "__main__":
    if a.engine == "inprocess":
        run_inprocess()
    else:
        server_app, client_app = secagg_apps()
        run_simulation(server_app=server_app, client_app=client_app,
                       num_supernodes=a.sites,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": a.cpus, "include_dashboard": False}})
    with open(a.times) as f:
        t = json.load(f)
    after = {r: (ts, acc, loss) for r, ts, acc, loss in t}
    if "sets" in data():
        print("label_sets=" + ";".join(",".join(str(k) for k in labels) for labels in _cache["sets"]))
    for r in range(1, a.rounds + 1):
        print(f"round_accuracy={r}:{after[r][1]:.4f}")
        print(f"round_loss={r}:{after[r][2]:.6f}")
    first = 1 if a.rounds > 1 else 0  # one round: from the evaluation of the initial model
    per_round = (after[a.rounds][0] - after[first][0]) / (a.rounds - first)
    print(f"s_per_round={per_round:.3f}")
    print(f"accuracy={after[a.rounds][1]:.4f}")
