"""The tensor-parallel harness on the CPU (issue 18): validation/harness/tp_forward.py,
bench_tp.py and campaign_tp.py.

* the split is gpusim's (kernels.parallel): per-rank heads, KV heads, intermediate,
  vocabulary and weight bytes for the measured models, and the collectives a rank's
  forward issues (op, bytes, order) against ``shard``'s collective kernels;
* the sharded forward's logits and KV writes equal the unsharded forward's at tp 2, 4
  and 8 (ranks as threads joined by a summing comm), and tp 1 is the single-GPU stack
  itself, bit for bit;
* the CPU campaign (two gloo processes: the check, steps, the collective sweep) writes
  steps.csv and the collective CSVs in the columns gpusim reads, packs and unpacks;
* the multi-GPU plan: every command parses, every model splits and fits its GPUs'
  memory, the budgets add up to one 10-minute call, and ``--kinds`` / ``--dry-run``
  print the device tool's calls and every part's command.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sys  # noqa: E402

HARNESS = Path(__file__).resolve().parents[1] / "validation" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

import bench_campaign as bc  # noqa: E402
import bench_tp  # noqa: E402
import campaign  # noqa: E402
import campaign_tp  # noqa: E402
import fused_forward  # noqa: E402
import reference  # noqa: E402
import tp_forward as tpf  # noqa: E402
from conftest import tiny_model  # noqa: E402

from gpusim.calibration import collectives as coll  # noqa: E402
from gpusim.calibration.measurements import read_steps  # noqa: E402
from gpusim.errors import FieldError  # noqa: E402
from gpusim.io import loader  # noqa: E402
from gpusim.kernels import build_kernels  # noqa: E402
from gpusim.kernels.parallel import rank_sizes, rank_weight_bytes, shard  # noqa: E402
from gpusim.specs.enums import KernelKind  # noqa: E402
from gpusim.step.rows import read_rows  # noqa: E402

MEASURED = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-70b-40l", "llama-3.2-1b",
            "qwen2.5-7b", "llama-2-7b")


# ----------------------------------------------------------------------------- the split

@pytest.mark.parametrize("name", MEASURED)
def test_the_split_is_gpusims(name):
    """Per-rank sizes and weight bytes equal kernels.parallel's; a split gpusim refuses
    the harness refuses too."""
    shape = bc.load_models([name], {}, bc.MODELS_DIR)[name]
    model = loader.load_model(name)
    for tp in (1, 2, 4, 8):
        try:
            want = rank_sizes(model, tp)
        except FieldError:
            with pytest.raises(ValueError):
                tpf.rank_split(shape, tp, 0)
            continue
        for rank in range(tp):
            s = tpf.rank_split(shape, tp, rank)
            assert (s.heads, s.kv_heads, s.intermediate, s.vocab) == (
                want.heads, want.kv_heads, want.intermediate, want.vocab)
            assert 2 * tpf.rank_weight_numel(shape, s) == rank_weight_bytes(model, tp, 1)
        starts = [tpf.rank_split(shape, tp, r).kv_start for r in range(tp)]
        group = shape.num_attention_heads // shape.num_key_value_heads
        for r, kv0 in enumerate(starts):   # each rank's query heads read its KV heads
            assert (r * want.heads) // group == kv0


class RecordingComm:
    """One rank's collectives, recorded (op, bytes) and not communicated: the all-reduce
    leaves its input, the all-gather repeats it ``tp`` times."""

    def __init__(self, tp: int):
        self.tp, self.calls = tp, []

    def all_reduce(self, x):
        self.calls.append(("all_reduce", x.numel() * x.element_size()))
        return x

    def all_gather(self, x):
        out = x.repeat(self.tp, *([1] * (x.dim() - 1)))
        self.calls.append(("all_gather", out.numel() * out.element_size()))
        return out


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("mode,batch,ctx,q", [("decode", 3, 7, 1), ("verify", 2, 9, 4),
                                              ("prefill", 2, 0, 5)])
def test_a_ranks_collectives_are_the_ones_gpusim_prices(tp, mode, batch, ctx, q):
    """The collectives one rank's bf16 forward issues, in order, with their bytes, are
    kernels.parallel.shard's collective kernels (embedding all-reduce, two all-reduces a
    layer, the LM head's all-gather of the padded vocabulary)."""
    shape, _ = tpf.CHECK_SHAPES["gqa-padded-vocab"]
    spec = tiny_model(layers=shape.num_hidden_layers, hidden=shape.hidden_size,
                      heads=shape.num_attention_heads, kv_heads=shape.num_key_value_heads,
                      intermediate=shape.intermediate_size, vocab=shape.vocab_size,
                      head_dim=shape.head_dim)
    stack = loader.load_stack("torch-fused")
    kernels = shard(build_kernels(spec, stack, mode, batch, ctx, q), spec, stack, tp)
    sections: dict[str, list] = {"prologue": [], "layer": [], "epilogue": []}
    for k in kernels:
        if k.kind == KernelKind.COLLECTIVE:
            sections[k.section].append((k.collective.op, float(k.collective.size_bytes[0])))
    want = (sections["prologue"] + sections["layer"] * shape.num_hidden_layers
            + sections["epilogue"])

    split = tpf.rank_split(shape, tp, tp - 1)
    comm = RecordingComm(tp)
    m = tpf.tp_model(tpf.random_rank_weights(shape, split, "cpu"), split, comm)
    cache = reference.KVCache(tpf.rank_shape(shape, split), batch, ctx + q, "cpu",
                              torch.bfloat16)
    tokens = torch.randint(0, shape.vocab_size, (batch, q))
    logits = fused_forward.forward(m, cache, tokens, ctx, mode)
    assert [(op, float(b)) for op, b in comm.calls] == want
    assert logits.shape == ((batch if mode == "prefill" else batch * q), shape.vocab_size)


# ----------------------------------------------------------------------------- the forward

class ThreadComm:
    """``tp`` ranks as threads of this process: each collective waits for every rank's
    tensor and combines them in rank order (the same sum on every rank)."""

    def __init__(self, tp: int, rank: int, shared: dict):
        self.tp, self.rank, self.shared = tp, rank, shared

    def _exchange(self, x):
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = x.clone()
        barrier.wait()
        got = list(slots)
        barrier.wait()
        return got

    def all_reduce(self, x):
        parts = self._exchange(x)
        total = parts[0].clone()
        for p in parts[1:]:
            total += p
        return x.copy_(total)

    def all_gather(self, x):
        return torch.cat(self._exchange(x))


def _threaded_check(tp: int) -> list[list[dict]]:
    shared = {"slots": [None] * tp, "barrier": threading.Barrier(tp, timeout=60)}
    results: list = [None] * tp
    errors: list = []

    def rank(r: int) -> None:
        try:
            results[r] = tpf.check_rank(ThreadComm(tp, r, shared), r, torch.device("cpu"))
        except BaseException as e:   # re-raised in the test's thread
            errors.append(e)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(tp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_the_sharded_forward_is_the_unsharded_one(tp):
    """Every rank's logits (decode, verify, prefill; GQA with a padded vocabulary, and
    one KV head replicated on every rank with tied embeddings over torch-hf's norm) and
    the KV entries it writes equal the unsharded forward's (float32)."""
    per_rank = _threaded_check(tp)
    assert len(per_rank[0]) == len(tpf.CHECK_SHAPES) * len(tpf.CHECK_STEPS)
    for rows in per_rank:
        for row in rows:
            assert row["shape_ok"], row
            assert row["logits"] < 1e-5 and row["kv"] < 1e-6, row


def test_tp1_is_the_single_gpu_stack():
    """At tp 1 a rank's model is the stack itself: no collective, the same logits bit for
    bit (torch-hf: reference.forward; torch-fused: the fused forward)."""
    shape, _ = tpf.CHECK_SHAPES["gqa-padded-vocab"]
    w = reference.Weights(shape, "cpu", torch.float32)
    split = tpf.rank_split(shape, 1, 0)
    tokens = torch.randint(0, shape.vocab_size, (2, 3))
    for stack, single in (("torch-hf", lambda c: reference.forward(w, c, tokens, 4, "verify")),
                          ("torch-fused", lambda c: fused_forward.forward(
                              fused_forward.model_from(w), c, tokens, 4, "verify"))):
        m = tpf.tp_model(tpf.shard_weights(w, split), split, RecordingComm(1), stack)
        assert m.lookup is None and m.head is None
        got = fused_forward.forward(m, reference.KVCache(shape, 2, 7, "cpu", torch.float32),
                                    tokens, 4, "verify")
        assert torch.equal(got, single(reference.KVCache(shape, 2, 7, "cpu", torch.float32)))
    with pytest.raises(ValueError, match="unknown stack"):
        tpf.tp_model(w, split, RecordingComm(1), "torch-compile")


# ----------------------------------------------------------------------------- bench_tp

def test_sweep_sizes_and_bus_factors():
    sizes = bench_tp.parse_sizes("1024:1073741824")
    assert len(sizes) == 21 and sizes[0] == 1024 and sizes[-1] == 1 << 30
    assert all(b == 2 * a for a, b in itertools.pairwise(sizes))
    assert bench_tp.parse_sizes("3000,1024") == (1024, 3000)
    with pytest.raises(ValueError):
        bench_tp.parse_sizes("0:10")
    assert bench_tp.bus_factor("all_reduce", 8) == pytest.approx(1.75)
    assert bench_tp.bus_factor("all_gather", 4) == bench_tp.bus_factor("all_to_all", 4) == 0.75
    assert list(coll.COLUMNS) == bench_tp.COLL_COLUMNS
    # the device notes' variables, in the driver and the script alike
    assert bench_tp.MULTICAST_OFF == campaign_tp.MULTICAST_OFF == {
        "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1"}


@pytest.fixture(scope="module")
def cpu_campaign(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp")
    t0 = time.monotonic()
    rc = campaign_tp.main(["--gpu", "cpu-test", "--device", "cpu", "--out",
                           str(out / "out"), "--budget-s", "120"])
    return rc, out / "out", time.monotonic() - t0


def _csv(tar: tarfile.TarFile, name: str) -> tuple[list[str], list[dict], str]:
    text = tar.extractfile(name).read().decode()
    r = csv.DictReader(io.StringIO(text))
    return list(r.fieldnames or []), list(r), text


def test_cpu_campaign_measures_and_files(cpu_campaign, tmp_path):
    """Two gloo processes: the check passes, steps and the three collectives land in
    the archive's tp/ in the columns gpusim's readers take, with their provenance."""
    rc, out, took = cpu_campaign
    assert rc == 0 and took < 120
    assert sorted(f.name for f in out.iterdir()) == [
        "campaign.log", "campaign.tar.gz", "summary.txt"]
    line = next(ln for ln in (out / "summary.txt").read_text().splitlines()
                if ln.startswith("tp2 "))
    assert " ok " in line
    with tarfile.open(out / "campaign.tar.gz") as tar:
        names = set(tar.getnames())
        lease = next(n for n in names if n.count("/") == 1 and "/lease_" in n)
        assert lease.endswith("_x2")
        summary = json.load(tar.extractfile(f"{lease}/tp2/summary.json"))
        assert summary["errors"] == 0 and summary["tp"] == 2
        assert {(c["model"], c["mode"]) for c in summary["check"]} == {
            (name, mode) for name in tpf.CHECK_SHAPES for mode, *_ in tpf.CHECK_STEPS}
        assert max(max(c["logits"], c["kv"]) for c in summary["check"]) < 1e-5
        env = json.load(tar.extractfile(f"{lease}/tp2/env.json"))
        assert env["tp"] == 2 and env["backend"] == "gloo"
        assert all(env["environment"][k] == v for k, v in bench_tp.MULTICAST_OFF.items())
        assert [r["rank"] for r in env["ranks"]] == [0, 1]
        header, rows, text = _csv(tar, "cpu-test/tp/steps.csv")
        assert header == bench_tp.TP_STEPS_COLUMNS
        assert {(r["mode"], r["launch"]) for r in rows} == {
            ("decode", "cpu"), ("prefill", "cpu"), ("decode", "eager")}
        assert {r["tp"] for r in rows} == {"2"} and all(
            0 <= float(r["rank_spread"]) < 1 for r in rows)
        for ops in ("all_reduce", "all_gather", "all_to_all"):
            h, crow, ctext = _csv(tar, f"cpu-test/tp/collectives/gloo_{ops}.csv")
            assert h == list(coll.COLUMNS) and len(crow) == 2
            assert [int(r["size_bytes"]) for r in crow] == [1024, 2048]
            # gpusim reads every field (a CPU row names gloo, which it rightly refuses)
            path = tmp_path / f"nccl_{ops}.csv"
            path.write_text(ctext.replace(",gloo,", ",nccl,"))
            points = coll.read_published(path)
            for p, r in zip(points, crow, strict=True):
                assert p.collective == ops and p.gpus == 2 and not p.graph
                busbw = p.size_bytes * coll._bus_factor(ops, 2) / p.time_s / 1e9
                assert busbw == pytest.approx(float(r["busbw_gb_per_s"]), rel=1e-3)
    # gpusim's readers take the file (the CPU's graph-less rows say launch "cpu", which
    # the calibration rightly refuses: a GPU writes "graph" there)
    steps = tmp_path / "steps.csv"
    steps.write_text(text.replace(",cpu,", ",graph,"))
    data = read_steps(steps)
    assert len(data) == 3 and set(data.launch) == {"graph", "eager"}
    assert data.cache_len is not None and (data.cache >= data.ctx + data.q).all()
    _, prows = read_rows(steps)
    assert {r.tp for r in prows} == {2}


def test_cpu_campaign_unpacks_into_data(cpu_campaign, tmp_path):
    _, out, _ = cpu_campaign
    data = tmp_path / "data"
    assert campaign.main(["--unpack", str(out), "--data", str(data)]) == 0
    assert (data / "cpu-test" / "tp" / "steps.csv").is_file()
    assert len(list((data / "cpu-test" / "tp" / "collectives").glob("gloo_*.csv"))) == 3
    assert list((data / "cpu-test").glob("lease_*_x2/campaign.json"))
    with pytest.raises(SystemExit, match="unpacked before"):
        campaign.main(["--unpack", str(out), "--data", str(data)])


# ----------------------------------------------------------------------------- the plan

@pytest.mark.parametrize("gpu", ["h100-sxm", "h200"])
@pytest.mark.parametrize("gpus", [2, 4, 8])
def test_the_multi_gpu_plan_parses_splits_and_fits(gpu, gpus):
    """Every part's command is one bench_tp accepts; every model it names splits at its
    tp and its rank's weights leave room for KV; the plan fits one 10-minute call."""
    parts = campaign_tp.plan("cuda", gpus, gpu)
    assert [p.group for p in parts] == sorted(p.group for p in parts)
    assert len({p.name for p in parts}) == len(parts)
    assert sum(p.planned_s for p in parts) <= 540 - campaign.PACK_RESERVE_S
    assert {campaign_tp.part_tp(p) for p in parts} == {1, *campaign_tp.tp_degrees(gpus)}
    args = campaign_tp.parse_args(["--gpu", gpu, "--out", "x"])
    memory = campaign_tp.GPU_MEMORY_GB[gpu] * 1e9
    for p in parts:
        cmd = campaign.command(p, args, gpu, Path("w") / p.name, 30)
        assert len(" ".join(cmd)) < 2000
        parsed = bench_tp.parse_args(cmd[2:])
        assert parsed.tp == campaign_tp.part_tp(p) <= gpus and parsed.device == "cuda"
        bc.select_phases(parsed.only, bench_tp.PHASES)
        if "steps" in (parsed.only or "steps"):
            names = bc.split_names(parsed.models)
            for name, shape in bc.load_models(names, {}, bc.MODELS_DIR).items():
                split = tpf.rank_split(shape, parsed.tp, 0)
                weights = 2 * tpf.rank_weight_numel(shape, split)
                assert weights < 0.6 * memory, (p.name, name)
    steps = {p.name: p for p in parts}[f"steps-tp{campaign_tp.tp_degrees(gpus)[0]}"]
    assert "llama-3.1-70b" in steps.args[steps.args.index("--models") + 1]


def test_dry_run_prints_every_command_and_budget(capsys):
    assert campaign_tp.main(["--dry-run", "--gpu", "h100-sxm", "--gpus", "8"]) == 0
    text = capsys.readouterr().out
    parts = campaign_tp.plan("cuda", 8, "h100-sxm")
    assert text.count("bench_tp.py") == len(parts)
    for p in parts:
        assert f" {p.name} " in text and f"{p.planned_s:4.0f} s (its --budget-s" in text
    assert "all 505 s of 530 s" in text and "--nccl-algo Ring" in text
    assert not Path("x").exists()


def test_kinds_prints_the_device_calls(capsys):
    assert campaign_tp.main(["--kinds"]) == 0
    text = capsys.readouterr().out
    calls = [ln for ln in text.splitlines() if ln.strip().startswith("run(kind=")]
    assert len(calls) == len(campaign_tp.KINDS) == 6
    for kind in campaign_tp.KINDS:
        assert f"run(kind={kind!r}, timeout_s=600, command=" in text
    assert len(campaign_tp.DEVICE_COMMAND) < 2000
    assert all(f"{k}={v}" in campaign_tp.DEVICE_COMMAND
               for k, v in campaign_tp.MULTICAST_OFF.items())
    assert "campaign.py --unpack" in text


def test_seventy_b_at_tp2_is_the_slice_on_80_gb():
    """The whole 70B at tp 2 holds 70.6 GB a rank: its 40-layer slice on 80 GB GPUs."""
    assert campaign_tp.seventy(2, "h100-sxm") == "llama-3.1-70b-40l"
    assert campaign_tp.seventy(2, "h200") == "llama-3.1-70b"
    assert campaign_tp.seventy(4, "h100-sxm") == "llama-3.1-70b"
    shape = bc.load_models(["llama-3.1-70b"], {}, bc.MODELS_DIR)["llama-3.1-70b"]
    whole = 2 * tpf.rank_weight_numel(shape, tpf.rank_split(shape, 2, 0))
    assert np.isclose(whole, 70.555e9, rtol=1e-3)
