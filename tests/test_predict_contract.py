"""`gpusim predict --in/--out` over every shipped GPU and model (and a config.json),
for decode, verify and prefill: the CSV contract of DESIGN.md."""

from __future__ import annotations

import csv

import pytest

from gpusim.capacity import memory_plan
from gpusim.cli import main
from gpusim.errors import ConfigError, FieldError
from gpusim.io import loader
from gpusim.kernels.quant import for_stack

GPUS = loader.available(loader.HARDWARE_DIR)
MODELS = loader.available(loader.MODELS_DIR)
HF_CONFIG = "tests/fixtures/hf_config_llama.json"


def _fits(model: str, gpu: str) -> bool:
    """Whether the default stack runs ``model`` on one ``gpu``: its weights as that
    stack stores them fit (gpt-oss-120b's MXFP4 experts need a fused-MoE stack)."""
    try:
        m = for_stack(loader.load_model(model), loader.load_stack())
        memory_plan(loader.load_gpu(gpu), m, 0.0).check_weights()
    except (ConfigError, FieldError):
        return False
    return True


@pytest.mark.parametrize("gpu", GPUS)
def test_every_model_and_mode_on_every_gpu(gpu, tmp_path, capsys):
    fitting = [m for m in MODELS if _fits(m, gpu)] + [HF_CONFIG]
    assert len(fitting) >= 2
    rows = []
    for m in fitting:
        rows += [(m, "decode", 4, 1000, 1), (m, "verify", 2, 500, 5), (m, "prefill", 1, 0, 256)]
    src = tmp_path / "rows.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "mode", "batch", "ctx", "q"])
        w.writerows(rows)
    out = tmp_path / "preds.csv"
    for launch in ("graph", "eager"):
        assert main(["predict", "--gpu", gpu, "--in", str(src), "--out", str(out),
                     "--launch", launch]) == 0
        with out.open(newline="") as fh:
            got = list(csv.DictReader(fh))
        assert len(got) == len(rows)
        for r, (m, mode, b, c, q) in zip(got, rows, strict=True):
            # same rows, same order, the input columns untouched
            assert (r["model"], r["mode"], r["batch"], r["ctx"], r["q"]) == \
                (m, mode, str(b), str(c), str(q))
            assert float(r["predicted_ms"]) > 0
            assert float(r["predicted_ms"]) >= float(r["roofline_ms"]) * (1 - 1e-9)
    capsys.readouterr()


@pytest.mark.parametrize("gpu", GPUS)
def test_a_model_that_does_not_fit_is_one_line_and_exit_2(gpu, capsys):
    too_big = [m for m in MODELS if not _fits(m, gpu)]
    if not too_big:
        pytest.skip(f"every shipped model fits on {gpu}")
    assert main(["predict", "--gpu", gpu, "--model", too_big[-1]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpusim: error: ")
