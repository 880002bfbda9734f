"""The privacy accountant against a reference implementation: allround-dp's epsilon for a grid of
(sampling rate, noise multiplier, steps, delta), from DP-SGD's typical settings to DP-FedAvg's and
the extremes, equals Google's dp_accounting RdpAccountant's (PyPI, in the setup's venv) on the same
RDP orders to 1e-9 relative, with the same optimal order; and the noise multiplier allround-dp
computes for a target epsilon keeps dp_accounting's epsilon within the target, while 0.1% less
noise would exceed it.

Usage: accountant_test.py ALLROUND_DP  (the venv's python3)"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
from allround_harness import Checks, skip  # noqa: E402

try:
    import dp_accounting
except ImportError as e:
    skip(f"no dp_accounting ({e})")

TOOL = sys.argv[1]
checks = Checks()


def tool(*args):
    out = subprocess.run([TOOL, *args], capture_output=True, text=True, check=True).stdout
    return dict(kv.split("=") for kv in out.split())


orders = [float(x) for x in subprocess.run([TOOL, "orders"], capture_output=True, text=True,
                                           check=True).stdout.strip().split(",")]


def reference(q, sigma, steps, delta):
    accountant = dp_accounting.rdp.RdpAccountant(orders)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon_and_optimal_order(delta)


GRID = [
    (256 / 60000, 1.1, 60 * 234, 1e-5),   # DP-SGD on MNIST-sized data, 60 epochs (Opacus's example)
    (256 / 60000, 0.7, 15 * 234, 1e-5),
    (64 / 50000, 1.0, 10000, 1e-6),
    (0.01, 4.0, 10000, 1e-5),             # Abadi et al.'s large-noise setting
    (0.1, 1.0, 100, 1e-5),                # DP-FedAvg: 10% of sites a round, 100 rounds
    (0.05, 0.8, 500, 1e-3),
    (0.5, 3.0, 50, 1e-5),
    (1.0, 2.0, 10, 1e-5),                 # no sampling
    (0.001, 0.6, 100000, 1e-5),           # small noise, many steps
    (0.02, 10.0, 1, 1e-5),                # one step, huge noise
]
worst = 0.0
for q, sigma, steps, delta in GRID:
    ours = tool("epsilon", "--q", repr(q), "--noise", repr(sigma), "--steps", str(steps), "--delta", repr(delta))
    eps_ref, order_ref = reference(q, sigma, steps, delta)
    eps = float(ours["epsilon"])
    rel = abs(eps - eps_ref) / max(eps_ref, 1e-12)
    worst = max(worst, rel)
    print(f"q={q:.5g} sigma={sigma} steps={steps} delta={delta}: allround {eps:.10g} (order {ours['order']}), "
          f"dp_accounting {eps_ref:.10g} (order {order_ref})")
    checks.check(f"epsilon at q={q:.4g}, sigma={sigma}, {steps} steps, delta={delta} equals dp_accounting's",
                 rel <= 1e-9 and float(ours["order"]) == float(order_ref), f"relative difference {rel:.3g}")
print(f"largest relative difference: {worst:.3g}")

for q, steps, target, delta in [(256 / 60000, 60 * 234, 3.0, 1e-5), (0.1, 100, 8.0, 1e-5), (0.01, 5000, 1.0, 1e-6)]:
    ours = tool("noise", "--q", repr(q), "--steps", str(steps), "--epsilon", repr(target), "--delta", repr(delta))
    sigma = float(ours["noise_multiplier"])
    at, _ = reference(q, sigma, steps, delta)
    less, _ = reference(q, sigma * 0.999, steps, delta)
    print(f"target epsilon {target} at q={q:.5g}, {steps} steps: noise multiplier {sigma:.6g}; dp_accounting gives "
          f"{at:.6g} there and {less:.6g} with 0.1% less noise")
    checks.check(f"the noise multiplier for epsilon {target} keeps dp_accounting's epsilon within it, and barely",
                 at <= target * (1 + 1e-9) and less > target)

sys.exit(checks.exit_code())
