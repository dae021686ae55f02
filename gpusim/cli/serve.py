"""``gpusim serve``: the serving simulator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gpusim import report
from gpusim.cli.common import (
    CalOpt,
    Fmt,
    FmtOpt,
    GpuOpt,
    Launch,
    LaunchOpt,
    StackOpt,
    _echo,
    _print_table,
    app,
    flags,
    setup,
)
from gpusim.io import loader


@app.command()
def serve(
    gpu: GpuOpt,
    model: Annotated[str, typer.Option(
        "--model", help="Model name, YAML or config.json path.")],
    scenario: Annotated[Path | None, typer.Option(
        "--scenario", help="Scenario YAML (workloads/scenarios/); options below override it.")
    ] = None,
    rate: Annotated[float | None, typer.Option(
        "--rate", help="Arrivals per second (poisson, gamma).")] = None,
    arrival: Annotated[str | None, typer.Option(
        "--arrival", help="poisson | gamma | closed (default poisson).")] = None,
    cv: Annotated[float | None, typer.Option(
        "--cv", help="gamma: coefficient of variation of inter-arrival gaps.")] = None,
    users: Annotated[int | None, typer.Option("--users", help="closed: number of users.")
                     ] = None,
    think_time_s: Annotated[float | None, typer.Option(
        "--think-time-s", help="closed: mean think time between requests.")] = None,
    prompt_dist: Annotated[str | None, typer.Option(
        "--prompt-dist", help="Prompt tokens: N | uniform:LO-HI | "
        "lognormal:median=M,sigma=S[,min=A][,max=B] | empirical:V1,V2,...")] = None,
    output_dist: Annotated[str | None, typer.Option(
        "--output-dist", help="Output tokens, same syntax as --prompt-dist.")] = None,
    trace: Annotated[Path | None, typer.Option(
        "--trace", help="Replay a JSONL/CSV trace (arrival_s, prompt_tokens, output_tokens).")
    ] = None,
    duration_s: Annotated[float | None, typer.Option(
        "--duration-s", help="Arrival window in simulated seconds; the run then drains.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="continuous (vLLM-style) | static.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(
        "--max-num-seqs", help="Most requests running at once (default 256).")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(
        "--max-num-batched-tokens", help="Token budget of one step (default 8192).")] = None,
    block_size: Annotated[int | None, typer.Option(
        "--block-size", help="KV cache block size in tokens (default 16).")] = None,
    reserve_fraction: Annotated[float | None, typer.Option(
        "--reserve-fraction", help="HBM fraction kept for runtime use (default 0.1).")
    ] = None,
    slo_ttft_s: Annotated[float | None, typer.Option(
        "--slo-ttft-s", help="Goodput: time-to-first-token target (default 2).")] = None,
    slo_tpot_s: Annotated[float | None, typer.Option(
        "--slo-tpot-s", help="Goodput: time-per-output-token target (default 0.1).")] = None,
    spec_draft: Annotated[str | None, typer.Option(
        "--spec-draft", help="Speculative decoding in decode-only steps with this draft: "
        "a model | medusa:H | eagle[:N] | ngram[:US] (default: no speculation).")] = None,
    spec_k: Annotated[str | None, typer.Option(
        "--spec-k", help="Draft tokens per iteration: N (1..16) or auto (per step, "
        "from the batch size; default 4).")] = None,
    spec_acceptance: Annotated[float | None, typer.Option(
        "--spec-acceptance", help="i.i.d. acceptance rate of a draft token (default 0.7).")
    ] = None,
    calibration: CalOpt = "auto",
    launch: LaunchOpt = Launch.GRAPH,
    stack: StackOpt = loader.DEFAULT_STACK,
    fmt: FmtOpt = Fmt.table,
    out_json: Annotated[Path | None, typer.Option("--out-json", help="Write JSON here.")
                        ] = None,
    out_csv: Annotated[Path | None, typer.Option("--out-csv", help="Write CSV here.")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write a Plotly HTML report here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Simulate serving over time: latency percentiles, throughput, goodput, KV use."""
    from gpusim import serving
    from gpusim.cli.progress import progress_bar
    from gpusim.io import scenario as scenario_io
    from gpusim.io.overhead import load_overhead
    from gpusim.report import serving_figures as figures
    from gpusim.report import serving_output as output

    plat = setup(gpu, stack, calibration, launch.value)
    m = loader.load_model(model)
    sc = scenario_io.scenario_from_options(
        scenario, prompt_dist=prompt_dist, output_dist=output_dist, duration_s=duration_s,
        seed=seed, arrival=arrival, rate_per_s=rate, cv=cv, users=users,
        think_time_s=think_time_s, trace=trace, policy=scheduler, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, block_size_tokens=block_size,
        reserve_fraction=reserve_fraction, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s,
        spec_draft=spec_draft, spec_acceptance=spec_acceptance,
        spec_k=None if spec_k is None else scenario_io.parse_spec_k(spec_k))
    with flags(spec_acceptance="--spec-acceptance", spec_k="--spec-k",
               block_size_tokens="--block-size"):
        engine = serving.build_engine(
            plat, m, sc, scenario_io.scenario_draft(sc, loader.load_model),
            load_overhead("auto", plat.gpu) if sc.speculative is not None else None)
    trace = scenario_io.scenario_trace(sc)
    total = float(sc.duration_s or 0.0)
    with progress_bar(total, quiet=quiet or total <= 0) as tick:
        result = serving.simulate(engine, sc, tick, trace)
    for path, text in ((out_json, output.json_text), (out_csv, output.csv_text),
                       (html, figures.serve_html)):
        if path is not None:
            report.write_atomic(path, text(result))
            print(f"wrote {path}", file=sys.stderr)
    if fmt is Fmt.json:
        _echo(output.json_text(result))
    elif fmt is Fmt.csv:
        _echo(output.csv_text(result).rstrip("\n"))
    else:
        _print_table(output.title(result), output.latency_rows(result),
                     output.LATENCY_COLUMNS)
        _print_table("throughput and engine", output.overview_rows(result),
                     output.OVERVIEW_COLUMNS)
