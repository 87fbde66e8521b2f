"""How close tiler's torch forward pass runs to what this CPU's fp32 arithmetic allows (issue 10, part 7).

The default path on the generated 8192 scene is bound by the network (its forward pass is ~90 % of the job), so
the question for the 0.4x-SAHI target is whether an fp32 network can still go much faster here. This prints the
fp32 matrix-multiply rate torch reaches on this machine (the practical peak: a large square GEMM, the best of
several) and each model's forward pass rate as tiler runs it (fused, channels-last, all cores, the job's batch),
in GFLOP/s from Ultralytics' own FLOP count; on a CPU with native bfloat16 also the bf16 GEMM and the networks in
bf16 (as precision auto runs them there). Rounds interleave the GEMMs and the models; medians.

    .venv/bin/python bench/bench_network_peak.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
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
    from tiler.model.predictor import cpu_has_native_bf16, load_model

    threads = _ultralytics.set_torch_threads(None)
    precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    nets = []
    for path, imgsz, batch in MODELS:
        if not path.exists():
            print(f"skipping {path} (absent)")
            continue
        net = load_model(path).model.fuse(verbose=False).eval().to(memory_format=torch.channels_last)
        x = torch.rand(batch, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
        gflops = get_flops(net, imgsz)
        for p in precisions:  # bf16: a copy as precision auto runs it (`_ultralytics.bf16_network` converts in place)
            nets.append((f"{path.stem} {imgsz} px, batch {batch}, {p}",
                         _ultralytics.bf16_network(copy.deepcopy(net)) if p == "bf16" else net, x.to(dtypes[p]),
                         gflops, p))

    def gemm(p: str) -> float:
        aa, bb = a.to(dtypes[p]), b.to(dtypes[p])
        best = 0.0
        for _ in range(5):
            t = time.perf_counter()
            aa @ bb
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        return best

    def forward(net, x) -> float:
        t = time.perf_counter()
        net(x)
        return time.perf_counter() - t

    rates: dict[str, list[float]] = {}
    with torch.inference_mode():
        for p in precisions:
            gemm(p)
        for _, net, x, _, _ in nets:
            forward(net, x)
            forward(net, x)
        for _ in range(args.rounds):
            for p in precisions:
                rates.setdefault(f"gemm {p}", []).append(gemm(p))
            for name, net, x, gflops, _ in nets:
                rates.setdefault(name, []).append(gflops * len(x) / forward(net, x))
    peak = {p: statistics.median(rates[f"gemm {p}"]) for p in precisions}
    for p in precisions:
        print(f"torch {torch.__version__}, {threads} threads; {p} GEMM {n} x {n}: {peak[p]:.1f} GFLOP/s "
              f"(rounds: {', '.join(f'{r:.0f}' for r in rates[f'gemm {p}'])})")
    for name, _, x, gflops, p in nets:
        rate = statistics.median(rates[name])
        print(f"{name}: {gflops:.2f} GFLOPs per image, {gflops / rate * 1000:.1f} ms per image, {rate:.1f} GFLOP/s "
              f"= {rate / peak[p]:.0%} of the {p} GEMM rate, {rate / peak['fp32']:.0%} of the fp32 one "
              f"(rounds: {', '.join(f'{r:.0f}' for r in rates[name])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
