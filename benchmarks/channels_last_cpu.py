"""Side by side: MobileNetV3-Small train step, contiguous vs channels_last, on one CPU thread (3 alternating reps)."""
import statistics
import time

import torch

from kdsweep.models import build_model


def step_time(size: int, cl: bool, bs: int, n: int = 6) -> float:
    """Median ms per image of one AdamW step (after 2 warm-up steps)."""
    torch.manual_seed(0)
    m = build_model("mobilenet_v3_small", 10)
    x = torch.randn(bs, 3, size, size)
    y = torch.randint(0, 10, (bs,))
    if cl:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    ts = []
    for _ in range(n + 2):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts[2:]) / bs * 1e3


torch.set_num_threads(1)
for size, bs in [(32, 64), (224, 16)]:
    r = {False: [], True: []}
    for _ in range(3):
        for cl in (False, True):
            r[cl].append(step_time(size, cl, bs))
    a, b = statistics.median(r[False]), statistics.median(r[True])
    print(f"{size}px bs{bs}: contiguous {a:.2f} ms/img, channels_last {b:.2f} ms/img, ratio {a/b:.2f}x")
