"""A continuous-batching serving engine in plain PyTorch: the engine whose runs
``gpusim serve --replay`` judges the serving simulator against.

Requests arrive on a wall-clock schedule (serve_workload.py); at the start of every
step the engine takes those due, schedules, builds the step's inputs on the host, runs
it (serve_model.py: one packed forward, CUDA graphs for decode-only steps, greedy
sampling on the device), reads the sampled tokens back (the host sync), appends them,
finishes requests and frees their KV blocks. When nothing is queued or running it
sleeps until the next arrival. Every step and every token is timed on the host clock
(``time.perf_counter``, seconds since the run started), so the host work of the loop is
in the records: each step's ``forward_s`` (wall: inputs to the device, launch, GPU,
tokens back), ``gpu_s`` (CUDA events around the forward's GPU work), and the rest
(arrivals, scheduling, preparing inputs, bookkeeping). gpusim prices ``gpu_s`` with
its step model and ``end_s - start_s - gpu_s`` with its host work per step.

The scheduler is vLLM V1's policy, the one gpusim.serving.scheduler.ContinuousBatching
models, rule for rule: every step, decoding requests first (one token each), then
unfinished prefills in admission order take chunks of what is left of
``max_num_batched_tokens``; if the KV blocks that needs are not free, the most recently
admitted request is preempted by recompute (its blocks freed, its generated tokens
kept, back to the head of the queue) until they are, and no one is admitted that step;
otherwise waiting requests are admitted first come first served while there is token
budget, a sequence slot (``max_num_seqs``) and KV room for their first chunk (after
their cached prefix, with prefix caching). A request whose prompt plus answer exceeds
``max_model_len`` or the whole cache is rejected at arrival.

Needs torch (serve_model.py) and the standard library.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from serve_kv import BlockManager
from serve_model import ModelRunner, StepInput


class Request:
    """One request: its prompt ids, answer so far, KV state and timestamps."""

    __slots__ = ("admitted_s", "arrival_s", "block_hashes", "block_table", "computed",
                 "conv", "decoding", "finish_s", "first_token_s", "hashed_blocks",
                 "hit_tokens", "output", "output_key", "output_tokens", "preemptions",
                 "prompt", "rid", "segments", "token_s", "turn")

    def __init__(self, rid: int, arrival_s: float, prompt: list[int], output_tokens: int,
                 segments: list[tuple[str, int]], output_key: str, conv: int = -1,
                 turn: int = 0) -> None:
        self.rid, self.arrival_s, self.prompt = rid, arrival_s, prompt
        self.output_tokens = output_tokens
        self.segments, self.output_key, self.conv, self.turn = segments, output_key, conv, turn
        self.output: list[int] = []
        self.token_s: list[float] = []
        self.computed = 0
        self.decoding = False
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.hashed_blocks = 0
        self.preemptions = 0
        self.hit_tokens = -1          # cached tokens at its first admission
        self.admitted_s = math.nan
        self.first_token_s = math.nan
        self.finish_s = math.nan

    @property
    def known(self) -> int:
        return len(self.prompt) + len(self.output)

    def token_ids(self) -> list[int]:
        return self.prompt + self.output


CUDAGRAPH_MODES = ("full_decode_only", "full_and_piecewise")


@dataclass(frozen=True)
class EngineConfig:
    """The engine's settings (vLLM's names where vLLM has them)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    num_blocks: int
    max_model_len: int
    prefix_caching: bool = False
    capture_sizes: tuple[int, ...] = ()
    kv_bucket_tokens: int = 256
    # vLLM's CUDAGraphMode: full_decode_only (decode-only steps replay a full graph,
    # mixed steps run eagerly) or full_and_piecewise (mixed steps of up to the largest
    # capture size too, as piecewise graphs: serve_pieces.py)
    cudagraph_mode: str = "full_decode_only"

    def __post_init__(self) -> None:
        if self.cudagraph_mode not in CUDAGRAPH_MODES:
            raise ValueError(f"cudagraph_mode {self.cudagraph_mode!r}: one of "
                             f"{', '.join(CUDAGRAPH_MODES)}")
        if self.cudagraph_mode == "full_and_piecewise" and not self.capture_sizes:
            raise ValueError("cudagraph_mode full_and_piecewise needs capture sizes")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if min(self.max_num_seqs, self.block_size, self.num_blocks, self.max_model_len) < 1:
            raise ValueError("every limit must be >= 1")


@dataclass
class Plan:
    decode: list[Request]
    chunks: list[tuple[Request, int, int]]     # (request, cached tokens, new tokens)
    admitted: list[Request]
    preempted: list[Request]


class Scheduler:
    """The step policy (see the module docstring) over a BlockManager."""

    def __init__(self, cfg: EngineConfig, bm: BlockManager) -> None:
        self.cfg, self.bm = cfg, bm
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}
        self.lost_tokens = 0

    def _work(self) -> tuple[list[Request], list[tuple[Request, int, int]], int, int]:
        bm = self.bm
        decode = [r for r in self.running.values() if r.decoding]
        budget = self.cfg.max_num_batched_tokens - len(decode)
        need = sum(bm.need(r, r.computed + 1) for r in decode)
        chunks = []
        for r in self.running.values():
            if r.decoding:
                continue
            if budget <= 0:
                break
            n = min(r.known - r.computed, budget)
            chunks.append((r, r.computed, n))
            need += bm.need(r, r.computed + n)
            budget -= n
        return decode, chunks, need, budget

    def schedule(self, now_s: float) -> Plan:
        bm = self.bm
        decode, chunks, need, budget = self._work()
        preempted = []
        while need > bm.free_blocks:
            _, r = self.running.popitem()
            bm.free(r)
            self.lost_tokens += r.computed
            r.computed, r.decoding = 0, False
            r.preemptions += 1
            self.waiting.appendleft(r)
            preempted.append(r)
            decode, chunks, need, budget = self._work()
        for r in decode:
            bm.grow(r, r.computed + 1)
        for r, ctx, n in chunks:
            bm.grow(r, ctx + n)
        admitted = []
        while (self.waiting and not preempted and budget > 0
               and len(self.running) < self.cfg.max_num_seqs):
            r = self.waiting[0]
            hit, revived = bm.cached_prefix(r, r.known)
            n = min(r.known - hit, budget)
            if bm.blocks_for(hit + n) - hit // bm.block_size + revived > bm.free_blocks:
                break
            self.waiting.popleft()
            bm.admit(r, hit, r.known)
            bm.grow(r, hit + n)
            r.computed = hit
            if r.hit_tokens < 0:
                r.hit_tokens, r.admitted_s = hit, now_s
            self.running[r.rid] = r
            chunks.append((r, hit, n))
            admitted.append(r)
            budget -= n
        return Plan(decode, chunks, admitted, preempted)


class Engine:
    """One serving run: ``run(workload)`` serves it to the end; ``steps``, ``served``
    and ``rejected`` are the records (serve_record.py writes them)."""

    def __init__(self, cfg: EngineConfig, runner: ModelRunner) -> None:
        self.cfg, self.runner = cfg, runner
        self.bm = BlockManager(cfg.num_blocks, cfg.block_size, cfg.prefix_caching)
        self.sched = Scheduler(cfg, self.bm)
        self.steps: list[dict[str, object]] = []
        self.served: list[Request] = []
        self.rejected: list[Request] = []
        self.wall_s = 0.0

    def _inputs(self, plan: Plan) -> StepInput:
        bs = self.cfg.block_size
        inp = StepInput([], [], [])

        def slot(r: Request, pos: int) -> int:
            return r.block_table[pos // bs] * bs + pos % bs

        for r in plan.decode:
            pos = r.computed     # a decoding request's last token is its newest answer token
            inp.sample.append(len(inp.tokens))
            inp.tokens.append(r.output[-1])
            inp.positions.append(pos)
            inp.slots.append(slot(r, pos))
            inp.decode_tables.append(r.block_table)
            inp.decode_keys.append(pos + 1)
        for r, ctx, n in plan.chunks:
            ids = r.token_ids()
            inp.tokens += ids[ctx:ctx + n]
            inp.positions += range(ctx, ctx + n)
            inp.slots += [slot(r, p) for p in range(ctx, ctx + n)]
            inp.chunks.append((ctx, n, r.block_table))
            if ctx + n == r.known:
                inp.sample.append(len(inp.tokens) - 1)
        return inp

    def _emit(self, r: Request, token: int) -> bool:
        """``r`` gained ``token``; True when that finished it (its blocks are freed)."""
        r.output.append(token)
        if len(r.output) < r.output_tokens:
            return False
        del self.sched.running[r.rid]
        self.bm.free(r)
        self.served.append(r)
        return True

    def _arrive(self, workload, t: float) -> None:
        while workload.next_s <= t:
            r = workload.pop()
            total = len(r.prompt) + r.output_tokens
            too_long = total > self.cfg.max_model_len
            if too_long or self.bm.blocks_for(total - 1) > self.cfg.num_blocks:
                self.rejected.append(r)
                workload.done(r, r.arrival_s, served=False)
            else:
                self.sched.waiting.append(r)

    def run(self, workload, max_wall_s: float = math.inf) -> None:
        """Serve ``workload`` until it has no more arrivals and the engine is empty (or
        ``max_wall_s`` passed: then nothing more is taken in, and the rest drains)."""
        clock, sched, bm = time.perf_counter, self.sched, self.bm
        t0 = clock()
        end = 0.0          # the last step's end: the next step starts there, if busy
        busy = False
        while True:
            t = clock() - t0
            if t < max_wall_s:
                self._arrive(workload, t)
            if not sched.running and not sched.waiting:
                nxt = workload.next_s
                if nxt == math.inf or t >= max_wall_s:
                    break
                _sleep_until(t0 + nxt)
                busy = False
                continue
            start = end if busy else t
            plan = sched.schedule(t)
            if not plan.decode and not plan.chunks:
                raise RuntimeError(f"no progress at t={t:.6f}: {len(sched.waiting)} waiting, "
                                   f"{bm.free_blocks} of {bm.num_blocks} blocks free")
            ctx_tokens = sum(r.computed for r in plan.decode)
            inp = self._inputs(plan)
            t_in = clock()
            out = self.runner.run(inp)
            forward_s = clock() - t_in
            t_tokens = clock() - t0
            samples = iter(out.tokens)
            emitted: list[Request] = []
            finished: list[Request] = []
            for r in plan.decode:
                r.computed += 1
                emitted.append(r)
                if self._emit(r, next(samples)):
                    finished.append(r)
            for r, ctx, n in plan.chunks:
                r.computed = ctx + n
                if r.computed == r.known:
                    emitted.append(r)
                    if self._emit(r, next(samples)):
                        finished.append(r)
                    else:
                        r.decoding = True
            # the step's tokens count from its end, as a stream would send them (and as
            # gpusim's loop emits them)
            end = clock() - t0
            for r in emitted:
                r.token_s.append(end)
                if len(r.token_s) == 1:
                    r.first_token_s = end
            for r in finished:
                r.finish_s = end
                workload.done(r, end)
            busy = True
            self.steps.append({
                "step": len(self.steps), "start_s": start, "end_s": end,
                "tokens_s": t_tokens, "forward_s": forward_s, "gpu_s": out.gpu_s,
                "launch": out.launch, "decode": len(plan.decode),
                "decode_ctx_tokens": ctx_tokens, "padded_batch": out.padded_batch,
                "key_len": out.key_len, "padded_tokens": out.padded_tokens,
                "prefill_tokens": sum(n for _, _, n in plan.chunks),
                "chunks": " ".join(f"{r.rid}:{c}:{n}" for r, c, n in plan.chunks),
                "tokens": len(inp.tokens), "seqs": len(plan.decode) + len(plan.chunks),
                "admitted": " ".join(str(r.rid) for r in plan.admitted),
                "preempted": " ".join(str(r.rid) for r in plan.preempted),
                "finished": " ".join(str(r.rid) for r in finished),
                "waiting": len(sched.waiting), "running": len(sched.running),
                "kv_used_blocks": bm.used_blocks, "kv_cached_blocks": bm.cached_free_blocks})
        self.wall_s = clock() - t0


def _sleep_until(deadline: float) -> None:
    """Sleep, then spin the last 20 ms: a sleeping thread can wake milliseconds late on
    a busy machine, and an engine that wakes late delays the arrival's first step."""
    left = deadline - time.perf_counter()
    if left > 0.03:
        time.sleep(left - 0.02)
    while time.perf_counter() < deadline:
        pass
