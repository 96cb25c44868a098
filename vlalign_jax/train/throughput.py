"""Examples per second and model FLOPs utilisation, measured between logged steps."""

from __future__ import annotations

import time

# Dense bf16 peak FLOP/s per device, from the vendors' datasheets.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5p": 459e12,
              "TPU v6": 918e12}


def peak_flops(device_kind: str) -> float | None:
    """The datasheet peak for a device kind string such as 'NVIDIA H100 80GB HBM3', if known."""
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


class Throughput:
    """Times the steps between two `summary()` calls; the first interval includes compilation."""

    def __init__(self, global_batch_size: int, device_kind: str):
        self.batch = global_batch_size
        self.peak = peak_flops(device_kind)
        self.flops_per_step: float | None = None
        self._start_time = time.perf_counter()
        self._start_step: int | None = None
        self._step = 0

    def tick(self, step: int) -> None:
        if self._start_step is None:  # the first step is compilation; measure from its end
            self._start_step, self._start_time = step, time.perf_counter()
        self._step = step

    def summary(self) -> dict[str, float]:
        now = time.perf_counter()
        steps = self._step - (self._start_step or self._step)
        out: dict[str, float] = {}
        if steps > 0:
            seconds = (now - self._start_time) / steps
            out["step_time_s"] = seconds
            out["examples_per_sec"] = self.batch / seconds
            if self.peak and self.flops_per_step:
                # XLA's cost analysis of an SPMD program counts one device's share of the work.
                out["mfu"] = self.flops_per_step / seconds / self.peak
        self._start_step, self._start_time = self._step, now
        return out
