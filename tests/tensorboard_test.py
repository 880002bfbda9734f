"""TensorBoard event files, read back with TensorBoard's own reader (event_accumulator, from the
`tensorboard` package deploy/setup.sh installs):

1. a cluster run (allround-worker, an MLP, 2 epochs): every number of every metrics.jsonl record is
   a scalar of the same name at the record's epoch, equal to it in float32; the weights'
   histograms count exactly the model's parameters; the confusion matrix is a picture of the right
   size; the job is the text under 'job'.
2. a VAE run: the sample and reconstruction grids in the event file are byte for byte the PNG files
   the run wrote beside it.
3. a federated run (a coordinator and 2 sites, 2 rounds): the coordinator's file holds each round's
   record as scalars at the model version, the 'sites' count, and the histogram of the sites' update
   norms, whose min and max equal the norms computed here from the updates and models the
   processes dumped.

Usage: tensorboard_test.py COORDINATOR WORKER  (run it with the venv's python3)"""
import glob
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "harness"))
sys.path.insert(0, HERE)
from allround_harness import Checks, Run, read_json, read_metrics, skip, start_coordinator  # noqa: E402
from safetensors_np import load_file  # noqa: E402

try:
    from tensorboard.backend.event_processing import event_accumulator
except ImportError as e:
    skip(f"no tensorboard package ({e})")

COORD, WORKER = sys.argv[1], sys.argv[2]
DATA = "/usr/share/datasets/fashion-mnist"
if not os.path.isdir(DATA):
    skip(f"no {DATA}")

BASE = ["--data.train_limit", "600", "--data.test_limit", "200", "--threads", "1", "--checkpoint.enabled", "false",
        "--train.progress_every_s", "0"]
checks = Checks()


def load(run_dir, who):
    files = glob.glob(os.path.join(run_dir, f"events.out.tfevents.*.{who}"))
    if len(files) != 1:
        raise AssertionError(f"{who}: event files {files} in {run_dir}")
    acc = event_accumulator.EventAccumulator(files[0], size_guidance={event_accumulator.SCALARS: 0,
                                                                      event_accumulator.HISTOGRAMS: 0,
                                                                      event_accumulator.IMAGES: 0,
                                                                      event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def scalars_match(acc, records, step_key, skip_keys):
    """Every number of every record is the scalar of its name at the record's step (float32)."""
    tags = set(acc.Tags()["scalars"])
    for rec in records:
        for key, value in rec.items():
            if key in skip_keys or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key not in tags:
                return f"no scalar '{key}' (tags: {sorted(tags)})"
            at_step = [e.value for e in acc.Scalars(key) if e.step == rec[step_key]]
            if at_step != [float(np.float32(value))]:
                return f"'{key}' at step {rec[step_key]}: {at_step}, metrics.jsonl {value}"
    return ""


with Run("tensorboard") as run:
    # 1. A cluster run that classifies.
    run_dir = run.path("mlp")
    p = run.start("mlp", [WORKER, *BASE, "--model.name", "mlp", "--model.hidden", "32", "--train.epochs", "2",
                          "--run_dir", run_dir])
    rc = p.wait(300)
    checks.check("the cluster run finished", rc == 0, p.err_tail())
    if rc == 0:
        acc = load(run_dir, "worker")
        records = read_metrics(run_dir)
        problem = scalars_match(acc, records, "epoch", {"round", "epoch", "time"})
        checks.check("every number of every metrics.jsonl record is the scalar of its name at its epoch",
                     len(records) == 2 and not problem, problem)
        weights = [t for t in acc.Tags()["histograms"] if t.startswith("weights/")]
        summary = read_json(os.path.join(run_dir, "summary.json"))
        counted = {step: sum(h.histogram_value.num for t in weights for h in acc.Histograms(t) if h.step == step)
                   for step in (1, 2)}
        checks.check("the weights' histograms count exactly the model's parameters at each epoch",
                     len(weights) == 4 and counted == {1: summary["parameters"], 2: summary["parameters"]},
                     f"{weights} {counted} parameters {summary['parameters']}")
        h = acc.Histograms(weights[0])[-1].histogram_value
        checks.check("a histogram's buckets hold all its values, between its min and max",
                     sum(h.bucket) == h.num and h.bucket_limit[-1] == h.max and h.min <= h.bucket_limit[0],
                     str(h)[:300])
        images = acc.Images("confusion_matrix") if "confusion_matrix" in acc.Tags()["images"] else []
        checks.check("the confusion matrix is a 10 x 10 grid picture after each evaluation",
                     [i.step for i in images] == [1, 2] and png_size(images[-1].encoded_image_string) == (171, 171)
                     and (images[-1].width, images[-1].height) == (171, 171), str(acc.Tags()["images"]))
        job = acc.Tensors("job") if "job" in acc.Tags()["tensors"] else []
        text = job[0].tensor_proto.string_val[0].decode() if job else ""
        checks.check("the job is the text under 'job', as YAML", "name: mlp" in text.replace("    ", "")
                     and "hidden: 32" in text, text[:200])

    # 2. A generative run: its pictures.
    vae_dir = run.path("vae")
    p = run.start("vae", [WORKER, *BASE, "--mode", "vae", "--vae.hidden", "32", "--train.epochs", "1",
                          "--optimizer.name", "adam", "--optimizer.lr", "1e-3", "--run_dir", vae_dir])
    rc = p.wait(300)
    checks.check("the VAE run finished", rc == 0, p.err_tail())
    if rc == 0:
        acc = load(vae_dir, "worker")
        same = []
        for name in ("samples", "reconstructions"):
            with open(os.path.join(vae_dir, f"{name}-epoch1.png"), "rb") as f:
                written = f.read()
            shown = acc.Images(name) if name in acc.Tags()["images"] else []
            same.append(len(shown) == 1 and shown[0].encoded_image_string == written)
        checks.check("the sample and reconstruction grids are the PNG files the run wrote, byte for byte",
                     same == [True, True], f"{same} {acc.Tags()['images']}")

    # 3. A federated run.
    os.makedirs(run.path("models"))
    os.makedirs(run.path("updates"))
    fed = ["--model.name", "mlp", "--model.hidden", "32", "--federated.rounds", "2", "--federated.min_sites", "2",
           "--federated.min_available", "2", "--partition.sites", "2", "--federated.site_eval_fraction", "0.1"]
    coord_dir = run.path("coordinator")
    coord, port = start_coordinator(run, COORD, [*BASE, *fed, "--no-auth", "--insecure", "--run_dir", coord_dir,
                                                 "--dump-models", run.path("models")])
    sites = [run.start(f"site{i}", [WORKER, *BASE, *fed, "--coordinator", f"127.0.0.1:{port}", "--insecure",
                                    "--site", f"s{i}", "--site-index", str(i), "--dump-updates", run.path("updates"),
                                    "--run_dir", run.path(f"site{i}")])
             for i in range(2)]
    rc = coord.wait(300)
    checks.check("the federated run finished", rc == 0 and all(s.wait(60) == 0 for s in sites), coord.err_tail())
    if rc == 0:
        acc = load(coord_dir, "coordinator")
        records = read_metrics(coord_dir)
        problem = scalars_match(acc, records, "round", {"round", "time"})
        checks.check("each round's record is scalars at the model version (federated accuracy too)",
                     len(records) == 2 and not problem and "federated_accuracy" in acc.Tags()["scalars"], problem)
        checks.check("the contributing sites are counted each round",
                     [(e.step, e.value) for e in acc.Scalars("sites")] == [(1, 2.0), (2, 2.0)])
        # Round index 1 started from version 1; its updates are the sites' dumped weights.
        global1 = load_file(run.path("models", "version-1.safetensors"))
        norms = []
        for f in sorted(glob.glob(run.path("updates", "round-1-site-*.safetensors"))):
            u = load_file(f)
            norms.append(np.sqrt(sum(np.sum((u[k].astype(np.float64) - g.astype(np.float64)) ** 2)
                                     for k, g in global1.items() if np.issubdtype(g.dtype, np.floating))))
        shown = [h.histogram_value for h in acc.Histograms("update_norms") if h.step == 2]
        ok = (len(norms) == 2 and len(shown) == 1 and shown[0].num == 2 and
              abs(shown[0].min - min(norms)) <= 1e-5 * max(norms) and abs(shown[0].max - max(norms)) <= 1e-5 * max(norms))
        checks.check("the update-norm histogram's min and max are the sites' update norms, computed independently",
                     ok, f"norms {norms}, shown {[(s.min, s.max, s.num) for s in shown]}")
        checks.check("the global model's weights are histograms each round",
                     len([t for t in acc.Tags()["histograms"] if t.startswith("weights/")]) == 4)

sys.exit(checks.exit_code())
