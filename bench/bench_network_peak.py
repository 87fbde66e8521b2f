"""How close tiler's torch forward pass runs to what this CPU's fp32 arithmetic allows (issue 10, part 7).

The default path on the generated 8192 scene is bound by the network (its forward pass is ~90 % of the job), so
the question for the 0.4x-SAHI target is whether an fp32 network can still go much faster here. This prints the
fp32 matrix-multiply rate torch reaches on this machine (the practical peak: a large square GEMM, the best of
several) and each model's forward pass rate as tiler runs it (fused, channels-last, all cores, the job's batch),
in GFLOP/s from Ultralytics' own FLOP count. Rounds interleave the GEMM and the models; medians.

    .venv/bin/python bench/bench_network_peak.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = [(REPO / "models" / "tiler-obb.pt", 320, 16), (SHARED / "models" / "yolov8n-obb.pt", 640, 4)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import torch
    from ultralytics.utils.torch_utils import get_flops

    from tiler.model import _ultralytics
    from tiler.model.predictor import load_model

    threads = _ultralytics.set_torch_threads(None)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    nets = []
    for path, imgsz, batch in MODELS:
        if not path.exists():
            print(f"skipping {path} (absent)")
            continue
        net = load_model(path).model.fuse(verbose=False).eval().to(memory_format=torch.channels_last)
        x = torch.rand(batch, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
        nets.append((f"{path.stem} {imgsz} px, batch {batch}", net, x, get_flops(net, imgsz)))

    def gemm() -> float:
        best = 0.0
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        return best

    def forward(net, x) -> float:
        t = time.perf_counter()
        net(x)
        return time.perf_counter() - t

    rates: dict[str, list[float]] = {"gemm": []}
    with torch.inference_mode():
        gemm()
        for _, net, x, _ in nets:
            forward(net, x)
            forward(net, x)
        for _ in range(args.rounds):
            rates["gemm"].append(gemm())
            for name, net, x, gflops in nets:
                rates.setdefault(name, []).append(gflops * len(x) / forward(net, x))
    peak = statistics.median(rates["gemm"])
    print(f"torch {torch.__version__}, {threads} threads; fp32 GEMM {n} x {n}: {peak:.1f} GFLOP/s "
          f"(rounds: {', '.join(f'{r:.0f}' for r in rates['gemm'])})")
    for name, _, x, gflops in nets:
        rate = statistics.median(rates[name])
        print(f"{name}: {gflops:.2f} GFLOPs per image, {gflops / rate * 1000:.1f} ms per image, {rate:.1f} GFLOP/s "
              f"= {rate / peak:.0%} of the GEMM rate (rounds: {', '.join(f'{r:.0f}' for r in rates[name])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
