"""The forward pass replayed as a CUDA graph: one launch per batch instead of one per layer.

A small network's batch is a few hundred short kernels, and on a GPU machine the Python thread that launches them
is what a job waits on: profiled in a whole job on an H200 (12 reader threads busy beside it), yolov8n-obb's
convolutions cost 248 us each to launch against 75 us with the machine idle, and the forward pass took longer to
launch than to run. A graph captured once per batch shape is replayed with one call; its outputs are copied out
of the graph's own memory (which the next replay overwrites), a few hundred MB on the device, about 0.1 ms.
"""

from __future__ import annotations

import warnings
from typing import Callable

from ..errors import first_line

MAX_GRAPHS = 2  # batch shapes kept captured (the job's batch, and perhaps one more); others run eagerly


class CapturedCall:
    """`fn(x)` for one shape and dtype of `x` (a CUDA tensor), captured as a CUDA graph on a copy of `example`."""

    def __init__(self, fn: Callable, example, owners):
        import torch

        self.input = example.clone()
        stream = torch.cuda.Stream(device=example.device)  # warm-up and capture off the default stream
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(self.input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(self.input)
        # tensors the modules hold as plain attributes (e.g. a detection head's anchors, remade when a batch of
        # another shape runs eagerly) are read by the graph where they were at capture: keep them alive
        self.kept = [v for m in owners for v in vars(m).values() if isinstance(v, torch.Tensor)]

    def __call__(self, x):
        """The outputs for `x`, copies of the graph's own (the next replay overwrites those, maybe before the
        caller has read these: it finishes a batch while the next one runs)."""
        import torch

        self.input.copy_(x)
        self.graph.replay()
        return _cloned(self.output, torch.Tensor)


def _cloned(tree, tensor_type):
    if isinstance(tree, tensor_type):
        return tree.clone()
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cloned(t, tensor_type) for t in tree)
    return tree


class CapturedCalls:
    """`fn` run through a `CapturedCall` per input shape from the second batch of that shape on (one-off shapes,
    such as a job's last partial batch, run eagerly); eagerly everywhere if a capture fails (a model whose forward
    pass synchronises with the host, say), with one warning."""

    def __init__(self, fn: Callable, owners):
        self.fn, self.owners = fn, owners
        self.calls: dict[tuple, CapturedCall] = {}
        self.seen: set[tuple] = set()
        self.failed = False

    def __call__(self, x):
        key = (tuple(x.shape), x.dtype)
        call = self.calls.get(key)
        if call is not None:
            return call(x)
        if self.failed or key not in self.seen or len(self.calls) >= MAX_GRAPHS:
            self.seen.add(key)
            return self.fn(x)
        try:
            call = self.calls[key] = CapturedCall(self.fn, x, self.owners)
        except Exception as exc:  # noqa: BLE001 - any capture failure: run as before
            self.failed = True
            warnings.warn(f"the model's forward pass cannot be captured as a CUDA graph ({first_line(exc)}); "
                          "it runs layer by layer", RuntimeWarning, stacklevel=2)
            return self.fn(x)
        return call(x)
