"""Does sustained arithmetic lower the SM clock (the GPU's power cap)? By how much,
against the fraction of time the SMs compute?

    python validation/harness/power_probe.py      (writes $OUT/power_*.csv)

1. Lone GEMMs: each shape idles 1.5 s (the clock recovers), then runs back to back
   for 2 s; every GEMM is timed with CUDA events (``power_gemm.csv``).
2. Duty cycle: a large GEMM alternates with a device-to-device copy sized so the GEMM
   takes a fraction u of the time (u = 1 ... 0.2), 2 s per u; the GEMM's median time
   over the last second against u (``power_duty.csv``).

nvidia-smi samples the SM clock, power and throttle reasons every ~20 ms throughout
(``power_samples.csv``; reason 0x4 is the software power cap).
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import threading
import time

import torch

OUT = os.environ.get("OUT", ".")
QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"
LONE = [(2048, 28672, 4096), (512, 28672, 4096), (448, 28672, 4096), (2048, 2048, 2048),
        (8192, 4096, 4096), (2048, 14336, 4096), (1024, 28672, 4096)]
DUTY_SHAPE = (2048, 28672, 4096)
DUTIES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


class Sampler:
    """nvidia-smi in a background thread (``enabled=False``: samples nothing)."""

    def __init__(self, enabled: bool = True) -> None:
        self.rows: list[tuple[float, str]] = []
        self._stop = not enabled
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop:
            r = subprocess.run(["nvidia-smi", f"--query-gpu={QUERY}",
                                "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, check=False)
            self.rows.append((time.time(), r.stdout.strip()))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()

    def write(self, path: str | os.PathLike[str]) -> None:
        """The samples as CSV: unix time, SM MHz, W, deg C, throttle reason bits."""
        with open(path, "w") as fh:
            fh.write("time,clock_mhz,power_w,temp_c,throttle\n")
            for t, s in self.rows:
                fh.write(f"{t},{s}\n")


def timed(fn, seconds: float) -> list[tuple[float, float]]:
    """(wall s since start, GPU us) of ``fn`` run back to back for ``seconds``."""
    t0 = time.time()
    events = []
    while time.time() - t0 < seconds:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        events.append((time.time() - t0, s, e))
        if len(events) % 50 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return [(w, s.elapsed_time(e) * 1e3) for w, s, e in events]


def operands(m: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device("cuda")
    return (torch.randn(m, k, device=dev, dtype=torch.bfloat16),
            torch.randn(n, k, device=dev, dtype=torch.bfloat16))


def main() -> None:
    lone, duty = [], []
    with Sampler() as sampler:
        for m, n, k in LONE:
            a, w = operands(m, n, k)
            for _ in range(3):
                a @ w.t()
            torch.cuda.synchronize()
            time.sleep(1.5)
            lone += [{"m": m, "n": n, "k": k, "t_s": round(t, 5), "us": round(us, 2)}
                     for t, us in timed(lambda a=a, w=w: a @ w.t(), 2.0)]
        a, w = operands(*DUTY_SHAPE)
        gemm_us = statistics.median(us for _, us in timed(lambda: a @ w.t(), 0.3))
        src = torch.empty(512 * 2**20, device="cuda", dtype=torch.uint8)
        dst = torch.empty_like(src)
        copy_us = statistics.median(us for _, us in timed(lambda: dst.copy_(src), 0.3))
        for u in DUTIES:
            # copies of 512 MiB make up the (1 - u) share of the time
            copies = round(gemm_us * (1 - u) / u / copy_us)

            torch.cuda.synchronize()
            time.sleep(1.5)
            t0 = time.time()
            samples = []
            while time.time() - t0 < 2.0:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                a @ w.t()
                e.record()
                for _ in range(copies):
                    dst.copy_(src)
                samples.append((time.time() - t0, s, e))
                if len(samples) % 10 == 0:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            late = [s.elapsed_time(e) * 1e3 for t, s, e in samples if t > 1.0]
            duty.append({"u_target": u, "copies": copies, "copy_us": round(copy_us, 1),
                         "gemm_cold_us": round(gemm_us, 1),
                         "gemm_sustained_us": round(statistics.median(late), 1),
                         "cycles": len(samples)})
            print(duty[-1], flush=True)
    for name, rows in (("power_gemm", lone), ("power_duty", duty)):
        with open(f"{OUT}/{name}.csv", "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
    sampler.write(f"{OUT}/power_samples.csv")
    for m, n, k in LONE:
        us = [r["us"] for r in lone if (r["m"], r["n"], r["k"]) == (m, n, k)]
        first, late = statistics.median(us[2:12]), statistics.median(us[len(us) // 2:])
        tf = 2 * m * n * k / 1e6
        print(f"{m}x{n}x{k}: {len(us)} GEMMs; first 10 {first:.1f} us ({tf / first:.0f} "
              f"TFLOP/s), sustained {late:.1f} us ({tf / late:.0f} TFLOP/s)")
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,power.limit,"
                          "clocks.max.sm", "--format=csv"], capture_output=True, text=True,
                         check=False).stdout)
    print("torch", torch.__version__, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


if __name__ == "__main__":
    main()
