"""Generate synthetic-chat.jsonl and synthetic-chat.csv (the same requests): a small,
bursty chat-like trace for `gpusim serve --trace`. Seeded; rerun to reproduce:

    python workloads/traces/make_synthetic_trace.py

Arrivals: gamma renewal process, 4 requests/s, CV 2 (bursty), over 150 s. Prompt
tokens: lognormal, median 400, sigma 0.9, clipped to [8, 8192]. Output tokens:
lognormal, median 200, sigma 0.8, clipped to [1, 2048].
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

SEED = 20240611
RATE_PER_S = 4.0
CV = 2.0
DURATION_S = 150.0
HERE = Path(__file__).resolve().parent


def make(seed: int = SEED) -> list[tuple[float, int, int]]:
    rng = np.random.default_rng(seed)
    shape = 1.0 / CV**2
    gaps = rng.gamma(shape, 1.0 / (RATE_PER_S * shape), size=int(RATE_PER_S * DURATION_S * 2))
    t = np.cumsum(gaps)
    t = t[t < DURATION_S]
    prompt = np.clip(np.rint(np.exp(rng.normal(np.log(400), 0.9, size=len(t)))), 8, 8192)
    output = np.clip(np.rint(np.exp(rng.normal(np.log(200), 0.8, size=len(t)))), 1, 2048)
    return [(round(float(a), 6), int(p), int(o)) for a, p, o in zip(t, prompt, output,
                                                                     strict=True)]


def main() -> None:
    rows = make()
    with open(HERE / "synthetic-chat.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for a, p, o in rows:
            fh.write(json.dumps({"arrival_s": a, "prompt_tokens": p, "output_tokens": o})
                     + "\n")
    with open(HERE / "synthetic-chat.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["arrival_s", "prompt_tokens", "output_tokens"])
        w.writerows(rows)
    print(f"wrote {len(rows)} requests")


if __name__ == "__main__":
    main()
