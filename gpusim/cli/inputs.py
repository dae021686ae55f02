"""``gpusim schema`` and ``gpusim list``: the input files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gpusim import report
from gpusim.cli.common import (
    Fmt,
    FmtOpt,
    _echo,
    _print_table,
    app,
    check_outputs,
)
from gpusim.errors import bad, cannot
from gpusim.io import loader


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory to write <kind>.schema.json files into (- or none: "
        "standard output).")] = None,
) -> None:
    """Export JSON schemas of the GPU, model, stack and calibration files."""
    from gpusim.io import schemas

    if out is not None and not report.is_stdout(out):
        check_outputs({}, {"--out": out})
    docs = schemas.all_schemas()
    if out is None or report.is_stdout(out):
        _echo(report.to_json(docs))
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot(out, exc) from None
    report.write_all([(out / f"{kind}.schema.json", report.to_json(doc))
                      for kind, doc in docs.items()])
    print(f"wrote {len(docs)} schemas to {out}", file=sys.stderr)


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="gpus, models or stacks")] = "gpus",
    fmt: FmtOpt = Fmt.table,
) -> None:
    """List the shipped GPUs, models or stacks."""
    dirs = {"gpus": loader.HARDWARE_DIR, "models": loader.MODELS_DIR,
            "stacks": loader.STACKS_DIR}
    if what not in dirs:
        raise bad("list", "must be one of gpus, models, stacks", value=what)
    rows: list[dict[str, object]] = []
    for name in loader.available(dirs[what]):
        if what == "gpus":
            g = loader.load_gpu(name)
            rows.append({"name": name, "display_name": g.display_name,
                         "hbm_gib": g.hbm_capacity_bytes / 2**30,   # 80 GiB: an "80 GB" card
                         "hbm_tb_per_s": g.hbm_bandwidth_bytes_per_s / 1e12,
                         "bf16_tflops": g.tensor_flops_per_s.bf16 / 1e12})
        elif what == "models":
            m = loader.load_model(name)
            rows.append({"name": name, "params_b": m.param_count / 1e9,
                         "layers": m.num_hidden_layers, "heads": m.num_attention_heads,
                         "kv_heads": m.num_key_value_heads,
                         "kv_kib_per_token": m.kv_bytes_per_token / 1024})
        else:
            rows.append({"name": name, "description": loader.load_stack(name).description})
    if fmt is Fmt.json:
        _echo(report.to_json(rows))
    elif fmt is Fmt.csv:
        _echo(report.to_csv(rows).rstrip("\n"))
    else:
        _print_table(what, rows, list(rows[0]) if rows else ["name"])
