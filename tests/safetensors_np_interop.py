"""tests/safetensors_np.py against the `safetensors` package (PyPI): files the package writes read the
same with ours, files ours writes read the same with the package, for every dtype both know, with
metadata, scalars and empty tensors; and a BF16 file written by safetensors.torch reads as the same
values widened to float32. Skips (exit 77) where the package is not installed: its point is the
outside reader. Usage: safetensors_np_interop.py"""
import os
import sys
import tempfile

import numpy as np

try:
    import safetensors
    from safetensors import safe_open
    import safetensors.numpy as stnp
except ImportError:
    print("no safetensors package in this Python (deploy/setup.sh installs it from PyPI): skipped")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

rng = np.random.default_rng(7)
tensors = {
    "model/conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
    "model/f64": rng.standard_normal((2, 5)), "model/f16": rng.standard_normal(7).astype(np.float16),
    "steps/i64": np.array([-(2**62), 3, 2**62 + 1], np.int64), "i32": np.arange(-5, 7, dtype=np.int32).reshape(3, 4),
    "i16": np.array([-32768, 1, 32767], np.int16), "i8": np.array([-128, 5, 127], np.int8),
    "u8": np.arange(256, dtype=np.uint8).reshape(16, 16), "mask": rng.random((3, 3)) > 0.5,
    "scalar": np.array(2.25, np.float32), "empty": np.zeros((0, 3), np.float32),
}
meta = {"examples": "450", "round": "2", "format": "np"}
checks = 0


def same(a, b, what):
    global checks
    assert sorted(a) == sorted(b), (what, sorted(a), sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), (what, k)
        checks += 1


with tempfile.TemporaryDirectory() as d:
    theirs, ours = f"{d}/theirs.safetensors", f"{d}/ours.safetensors"
    stnp.save_file(tensors, theirs, metadata=meta)
    same(safetensors_np.load_file(theirs), tensors, "package writes, ours reads")
    assert safetensors_np.metadata(theirs) == meta
    checks += 1

    safetensors_np.save_file(tensors, ours, metadata=meta)
    same(stnp.load_file(ours), tensors, "ours writes, package reads")
    with safe_open(ours, "np") as f:
        assert f.metadata() == meta, f.metadata()
    checks += 1
    safetensors_np.save_file({"x": np.ones(3, np.float32)}, ours)
    with safe_open(ours, "np") as f:
        assert not f.metadata(), f.metadata()  # None or {}: no metadata
    assert safetensors_np.metadata(ours) == {}
    checks += 1

    import torch
    import safetensors.torch as stt
    t = {"bf": torch.randn(4, 6).to(torch.bfloat16), "f": torch.randn(3), "l": torch.arange(5)}
    stt.save_file(t, theirs, metadata={"examples": "12"})
    got = safetensors_np.load_file(theirs)
    for k, v in t.items():
        want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        assert got[k].dtype == want.dtype and np.array_equal(got[k], want), k
        assert torch.equal(torch.from_numpy(got[k]), v.float() if v.dtype == torch.bfloat16 else v), k
        checks += 1
    assert safetensors_np.metadata(theirs) == {"examples": "12"}
    checks += 1

print(f"safetensors_np agrees with safetensors {safetensors.__version__}: {checks} checks passed")
