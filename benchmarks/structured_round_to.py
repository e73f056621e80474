"""Side by side: ORT CPU batch-1 latency at 224 px of a trained MobileNetV3-Small KD student, dense vs channel-pruned
with round_to 8 / 16 and p = 0.5 / 0.6 (one thread, interleaved in one session, 10 warm-up + 100 timed iterations).

    . .venv/bin/activate
    python benchmarks/compress.py --out /tmp/runs-compress ...       # first: trains the `compress` experiment
    python benchmarks/structured_round_to.py /tmp/runs-compress/runs/compress

Pruning only (no recovery training): latency does not depend on the weights' values.
"""
import copy
import sys
import warnings

import torch

from kdsweep.config import load_config
from kdsweep.export import export_onnx
from kdsweep.measure import count_macs
from kdsweep.paths import Paths
from kdsweep.plan import make_plan
from kdsweep.runtimes import ort_runner, ort_session, time_interleaved
from kdsweep.stages import load_model
from kdsweep.structured import structured_prune

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
exp = sys.argv[1]
cfg = load_config(f"{exp}/config.yaml")
dense = load_model(cfg, make_plan(cfg).by_key()["student-T4-a0.9-s0"], Paths(exp), 10).eval()
models = {"dense": dense}
for amount, round_to in ((0.5, 8), (0.5, 16), (0.6, 8)):
    m = copy.deepcopy(dense)
    structured_prune(m, amount, 224, round_to=round_to)
    models[f"p={amount} round_to={round_to}"] = m.eval()
x = torch.randn(4, 3, 224, 224)
runners = {name: ort_runner(ort_session(export_onnx(m, x, rtol=1e-2).onnx, "cpu", 1), 224)
           for name, m in models.items()}
stats = time_interleaved(runners, 10, 100)
print("| model | MACs @224 | params | ORT ms @224 | speed-up |\n| --- | ---: | ---: | ---: | ---: |")
for name, m in models.items():
    s = stats[name]
    print(f"| {name} | {count_macs(m, 224) / 1e6:.0f}M | {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M | "
          f"{s.median_ms:.3f} ± {s.ci95_ms:.3f} | {stats['dense'].median_ms / s.median_ms:.2f}x |")
