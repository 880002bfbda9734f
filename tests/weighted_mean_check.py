"""Checks that each global model a coordinator dumped (DIR/models/version-<r+1>.safetensors) is the
example-weighted mean of the updates its sites dumped for round r (DIR/updates/round-<r>-site-*,
each with its example count in the metadata), to float precision.
Usage: weighted_mean_check.py DIR ROUNDS SITES [--non-iid]  (--non-iid: the counts must differ)"""
import glob, os, sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_np import load_file, metadata  # noqa: E402  (numpy only: no PyPI package needed)

t, rounds, sites = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
non_iid = "--non-iid" in sys.argv[4:]
for r in range(rounds):
    files = sorted(glob.glob(f"{t}/updates/round-{r}-site-*.safetensors"))
    assert len(files) == sites, files
    counts = [int(metadata(f)["examples"]) for f in files]
    updates = [load_file(f) for f in files]
    total = sum(counts)
    model = load_file(f"{t}/models/version-{r + 1}.safetensors")
    worst = 0.0
    for name, g in model.items():
        if not np.issubdtype(g.dtype, np.floating):
            continue
        want = sum(u[name].astype(np.float64) * (n / total) for u, n in zip(updates, counts))
        worst = max(worst, float(np.abs(g.astype(np.float64) - want).max(initial=0.0)))
    print(f"round {r}: sites hold {counts} examples; max |global - weighted mean| = {worst:.2e}")
    assert worst < 1e-6, worst
    if non_iid:
        assert len(set(counts)) > 1  # the weights really differ
