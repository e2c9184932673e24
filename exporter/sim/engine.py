"""One vLLM-v1-like engine: continuous batching with a token budget per step, chunked prefill,
KV blocks with a prefix cache, and preemption by recomputation.

Each call of `Engine.step()` schedules one step, advances the engine to its state after the
step, and returns what the step did (`StepResult`): its cost from the hardware model and what
vLLM's counters will see when the step's outputs are processed. The caller owns the clock.

Scheduling, per step:
1. Decode first: every decoding sequence gets one token (max_num_seqs <= the token budget, so
   they always fit). A sequence whose KV fills its last block gets a new one; when none is free,
   the lowest-priority running request (the last admitted) is preempted: its blocks are freed
   (full ones stay in the prefix cache), it goes back to the head of the waiting queue, and it
   later recomputes its prompt and the tokens it had generated (hits on its own cached blocks
   included).
2. Running sequences still in prefill continue with chunks from the remaining budget.
3. If nobody was preempted, waiting requests are admitted in arrival order while the budget,
   `max_num_seqs` and free blocks allow: their leading whole blocks found in the prefix cache
   are reused (at most `prompt - 1` tokens, so at least one is computed), the rest is prefilled
   in chunks.
A step emits a token for every decoding sequence and for every sequence whose prefill completes.

Prefix cache: a full block is identified by (shared prefix id, index) while it lies wholly
inside a shared prefix, else by (request, index). Full blocks enter the cache when scheduled (as
in vLLM, so two requests admitted in the same step can share); freed cached blocks stay
reusable until evicted, least recently freed first, when plain free blocks run out. vLLM's
`kv_cache_usage_perc` counts those evictable blocks as free, and so does `kv_usage` here.

Decoding sequences are not touched per step: their progress is implied by the step number,
and a heap holds the steps at which one needs a new block or finishes, so a decode step costs
O(1) plus its events.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import heappop, heappush

from exporter.sim.hardware import HardwareModel, StepCost
from exporter.sim.workload import Request

WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3
_NEED_BLOCK, _FINISH = 0, 1
_NONE: tuple[Seq, ...] = ()  # shared by the steps in which no sequence starts or finishes
_NO_ADMISSIONS = (0, 0, 0)  # queries, query hits, first hits of a step that admits nobody


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    num_gpu_blocks: int | None = None  # None: what fits beside the weights (HardwareModel.kv_cache_blocks)
    enable_prefix_caching: bool = True
    max_model_len: int = 32768  # longer requests (prompt + output) are rejected at arrival, as vLLM does
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.block_size < 1:
            raise ValueError("max_num_seqs and block_size must be positive")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be at least max_num_seqs")


class Seq:
    """One request inside the engine. While decoding, `out` and `computed` are their values at
    step `s0` (`c0` computed tokens); the current ones are implied by the step number."""

    __slots__ = (
        "blocks",
        "c0",
        "computed",
        "epoch",
        "finished_at",
        "first_hits",
        "first_token_at",
        "high",
        "hit_tokens",
        "nhashed",
        "out",
        "output_len",
        "preemptions",
        "prefix_blocks",
        "prefix_id",
        "prompt",
        "req",
        "rid",
        "s0",
        "scheduled",
        "scheduled_at",
        "state",
        "target",
    )

    def __init__(self, req: Request, block_size: int) -> None:
        self.req = req
        self.rid = req.rid
        self.prompt = req.prompt_len
        self.output_len = req.output_len
        self.prefix_id = req.prefix_id
        self.prefix_blocks = min(req.prefix_len, req.prompt_len) // block_size if req.prefix_id >= 0 else 0
        self.target = req.prompt_len  # tokens to compute before the next token is emitted
        self.computed = 0
        self.out = 0
        self.blocks: list[int | None] = []  # per block: its cache key, or None while private
        self.nhashed = 0  # leading blocks already offered to the prefix cache
        self.state = WAITING
        self.epoch = 0  # bumped whenever heap entries about this sequence become stale
        self.s0 = 0
        self.c0 = 0
        self.hit_tokens = 0  # prefix-cache hits at the latest admission
        self.first_hits = 0  # ... at the first one: what vLLM reports as cached prompt tokens
        self.scheduled = False
        self.high = 0  # prompt tokens computed (or hit) at least once: beyond the first pass, prefill is recomputation
        self.preemptions = 0
        self.scheduled_at: float | None = None  # start of the step that first scheduled it (vLLM's prefill
        # time runs from here to the first token, its decode time from there to the finish)
        self.first_token_at: float | None = None
        self.finished_at: float | None = None


class StepResult:
    """What one step did. Counters (`emitted`, `prompt_credit`, ...) are what vLLM's metrics
    see when this step's outputs are processed, i.e. at the step's end."""

    __slots__ = (
        "cached_credit",
        "chunks",
        "cost",
        "decode",
        "decode_context",
        "emitted",
        "finished",
        "first_hits",
        "first_tokens",
        "kv_usage",
        "preemptions",
        "prefill",
        "prompt_credit",
        "queries",
        "query_hits",
        "recomputed",
        "running",
        "step",
        "waiting",
    )

    def __init__(
        self,
        cost: StepCost,
        step: int,
        prefill: int,
        recomputed: int,
        decode: int,
        chunks: int,
        emitted: int,
        prompt_credit: int,
        cached_credit: int,
        first_tokens: Sequence[Seq],
        preemptions: int,
        queries: int,
        query_hits: int,
        first_hits: int,
        finished: Sequence[Seq],
        running: int,
        waiting: int,
        kv_usage: float,
        decode_context: int,
    ) -> None:
        self.cost = cost
        self.step = step
        self.prefill = prefill  # tokens computed by prefill chunks, recomputation included
        self.recomputed = recomputed  # ... of which not a prompt token's first computation
        self.decode = decode  # decode tokens (= decoding sequences)
        self.chunks = chunks  # sequences with a prefill chunk this step
        self.emitted = emitted  # output tokens emitted (decode + prefills that completed)
        self.prompt_credit = prompt_credit  # whole prompts of requests emitting their first token
        self.cached_credit = cached_credit  # their prefix-cache hits (at first admission)
        self.first_tokens = first_tokens  # the sequences that emitted their first token
        self.preemptions = preemptions
        self.queries = queries  # prefix-cache lookups at admission, in tokens
        self.query_hits = query_hits
        self.first_hits = first_hits  # cache hits of requests admitted for the first time
        self.finished = finished  # sequences that finished
        self.running = running  # gauges after the step
        self.waiting = waiting
        self.kv_usage = kv_usage
        self.decode_context = decode_context  # KV tokens the decode tokens read (their computed context)


class _Tally:
    """The running totals of one step, from its chunks to its StepResult."""

    __slots__ = (
        "cached_credit",
        "decode",
        "decode_context",
        "emitted",
        "finished",
        "first_tokens",
        "hit",
        "own",
        "pairs",
        "prefill",
        "prompt_credit",
        "recomputed",
    )

    def __init__(self, decode: int, decode_context: int) -> None:
        self.decode = decode
        self.decode_context = decode_context
        self.emitted = decode  # every decoding sequence emits one token; completing prefills add theirs
        self.prompt_credit = 0
        self.cached_credit = 0
        self.first_tokens: list[Seq] | None = None  # made only in the steps that need one
        self.finished: list[Seq] | None = None
        self.prefill = self.own = self.hit = self.recomputed = 0  # set by Engine._run_chunks if any
        self.pairs = 0.0


class Engine:
    def __init__(self, config: EngineConfig, hardware: HardwareModel, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError("the engine needs at least one KV block")
        self.config = config
        self.hw = hardware
        self.bs = config.block_size
        self.num_blocks = num_blocks
        self.max_model_len = min(config.max_model_len, num_blocks * config.block_size)
        self.caching = config.enable_prefix_caching
        self.waiting: deque[Seq] = deque()
        self.running: dict[int, Seq] = {}  # admission order: the last one is preempted first
        self.prefilling: dict[int, Seq] = {}
        self.decoding: dict[int, Seq] = {}
        self.heap: list[tuple[int, int, int, Seq, int]] = []  # (step, kind, rid, seq, epoch)
        self.step_no = 0
        self._dec_a = 0  # sum over decoding sequences of (c0 - s0): their context is _dec_a + n * step
        self.free_plain = num_blocks
        self.refs: dict[int, int] = {}  # cached blocks in use -> reference count
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody uses, LRU first
        self.rejected = 0

    # -- requests -----------------------------------------------------------------------

    def add_request(self, req: Request) -> Seq | None:
        """Queue a request; None (and counted in `rejected`) when it can never fit."""
        if req.prompt_len + req.output_len > self.max_model_len:
            self.rejected += 1
            return None
        seq = Seq(req, self.bs)
        self.waiting.append(seq)
        return seq

    @property
    def has_work(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_plain - len(self.evictable)

    # -- blocks -------------------------------------------------------------------------

    def _key(self, seq: Seq, j: int) -> int:
        if j < seq.prefix_blocks:
            return (seq.prefix_id << 32) | j
        return -((seq.rid << 32) | j) - 1

    def _alloc(self, n: int) -> bool:
        if self.free_plain + len(self.evictable) < n:
            return False
        take = min(n, self.free_plain)
        self.free_plain -= take
        for _ in range(n - take):
            self.evictable.popitem(last=False)
        return True

    def _promote(self, seq: Seq, computed: int) -> None:
        """Offer the sequence's full blocks to the prefix cache."""
        full = min(computed // self.bs, len(seq.blocks))
        j = seq.nhashed
        if j >= full:
            return
        refs, evictable, blocks = self.refs, self.evictable, seq.blocks
        while j < full:
            key = self._key(seq, j)
            if key not in refs and key not in evictable:  # else a duplicate: it stays private
                blocks[j] = key
                refs[key] = 1
            j += 1
        seq.nhashed = full

    def _free(self, seq: Seq, computed: int) -> None:
        if self.caching:
            self._promote(seq, computed)
        refs, evictable = self.refs, self.evictable
        for key in reversed(seq.blocks):  # tail blocks are evicted before the prefix blocks
            if key is None:
                self.free_plain += 1
            else:
                left = refs[key] - 1
                if left:
                    refs[key] = left
                else:
                    del refs[key]
                    evictable[key] = None
        seq.blocks = []
        seq.nhashed = 0

    def _preempt(self, seq: Seq, s: int) -> None:
        rid = seq.rid
        if seq.state == DECODE:
            done = s - seq.s0
            computed = seq.c0 + done
            seq.out += done
            del self.decoding[rid]
            self._dec_a -= seq.c0 - seq.s0
        else:
            computed = seq.computed
            del self.prefilling[rid]
        self._free(seq, computed)
        del self.running[rid]
        seq.target = seq.prompt + seq.out  # recompute everything, the last sampled token included
        seq.computed = 0
        seq.epoch += 1
        seq.state = WAITING
        seq.preemptions += 1
        self.waiting.appendleft(seq)

    def _victim(self) -> Seq:
        return self.running[next(reversed(self.running))]

    # -- one step -----------------------------------------------------------------------
    # `step` runs the phases below in their order (the numbers of the module docstring, then the
    # chunks, the finishing decodes and the result); what the chunks add up travels in a `_Tally`.

    def step(self, now: float = 0.0) -> StepResult | None:
        """Schedule and account one step starting at `now`; None when nothing can run."""
        s = self.step_no
        preempted = self._grant_decode_blocks(s)
        budget = self.config.max_num_batched_tokens - len(self.decoding)
        chunks: list[tuple[Seq, int, int]] = []  # (sequence, tokens, computed before the chunk)
        if self.prefilling:
            budget, preempted = self._continue_prefills(s, budget, chunks, preempted)
        admitted = self._admit(now, budget, chunks) if self.waiting and not preempted else _NO_ADMISSIONS

        decode = len(self.decoding)
        if not chunks and decode == 0:
            if preempted and self.waiting:
                # Everything running was preempted: the next step admits again.
                result = self.step(now)
                if result is not None:
                    result.preemptions += preempted
                return result
            return None

        # The step runs. Decode context is what the decoding sequences have computed so far
        # (before the prefills completing in this step join them).
        tally = _Tally(decode, self._dec_a + decode * s)
        if chunks:
            self._run_chunks(s, chunks, tally)
        self._finish_decodes(s, tally)
        self.step_no = s + 1
        return self._result(s, tally, len(chunks), preempted, admitted)

    def _grant_decode_blocks(self, s: int) -> int:
        """Decoding sequences whose KV fills their last block need a new one before this step.
        When none is free, running requests are preempted from the back (the last admitted
        first) until one is, or until the sequence itself was. Returns the preemptions."""
        heap = self.heap
        preempted = 0
        while heap and heap[0][0] == s and heap[0][1] == _NEED_BLOCK:
            _, _, _, seq, epoch = heappop(heap)
            if seq.epoch != epoch:
                continue
            if self.caching:
                self._promote(seq, seq.c0 + (s - seq.s0))
            while not self._alloc(1):
                victim = self._victim()
                self._preempt(victim, s)
                preempted += 1
                if victim is seq:
                    break
            else:
                seq.blocks.append(None)
                heappush(heap, (s + self.bs, _NEED_BLOCK, seq.rid, seq, epoch))
        return preempted

    def _continue_prefills(
        self, s: int, budget: int, chunks: list[tuple[Seq, int, int]], preempted: int
    ) -> tuple[int, int]:
        """Running sequences still in prefill continue, in admission order, with chunks from
        the budget. One that needs blocks preempts from the back like a decoding one; once it
        has preempted itself, no later prefill runs this step. Returns (budget, preempted)."""
        bs = self.bs
        for seq in list(self.prefilling.values()):
            if budget <= 0:
                break
            if seq.state != PREFILL:  # preempted as a victim during this loop
                continue
            c = seq.computed
            k = min(seq.target - c, budget)
            need = -(-(c + k) // bs) - len(seq.blocks)
            if need > 0:
                while not self._alloc(need):
                    victim = self._victim()
                    self._preempt(victim, s)
                    preempted += 1
                    if victim is seq:
                        return budget, preempted
                seq.blocks.extend([None] * need)
            if self.caching:
                self._promote(seq, c + k)
            chunks.append((seq, k, c))
            budget -= k
        return budget, preempted

    def _admit(self, now: float, budget: int, chunks: list[tuple[Seq, int, int]]) -> tuple[int, int, int]:
        """Admit waiting requests in order while the budget, `max_num_seqs` and free blocks allow
        (the head of the queue blocks the rest). Returns the prefix-cache queries and hits, in
        tokens, and the hits of the requests scheduled for the first time."""
        waiting, running, evictable = self.waiting, self.running, self.evictable
        max_seqs = self.config.max_num_seqs
        bs = self.bs
        queries = query_hits = first_hits = 0
        while waiting and budget > 0 and len(running) < max_seqs:
            seq = waiting[0]
            target = seq.target
            hit_keys = self._cached_blocks(seq, target) if self.caching else []
            hits = len(hit_keys)
            c = hits * bs
            k = min(target - c, budget)
            need = -(-(c + k) // bs) - hits
            held = sum(1 for key in hit_keys if key in evictable)  # hits counted as free now
            if self.free_plain + len(evictable) - held < need:
                break
            self._take_blocks(seq, hit_keys, need)
            seq.computed = c
            if not seq.scheduled:
                seq.scheduled = True
                seq.first_hits = c
                seq.high = c
                seq.scheduled_at = now
                first_hits += c
            # Context read from the cache counts as cached input only for the prompt's first
            # hits; a resumed sequence reading back its own blocks is recomputing input.
            seq.hit_tokens = min(c, seq.first_hits)
            queries += target
            query_hits += c
            waiting.popleft()
            seq.state = PREFILL
            running[seq.rid] = seq
            self.prefilling[seq.rid] = seq
            if self.caching:
                self._promote(seq, c + k)
            chunks.append((seq, k, c))
            budget -= k
        return queries, query_hits, first_hits

    def _cached_blocks(self, seq: Seq, target: int) -> list[int]:
        """The keys of the sequence's leading blocks found in the prefix cache. They cover at most
        `target - 1` tokens, so at least one is computed; before any preemption only its shared
        prefix can be cached."""
        limit = (target - 1) // self.bs
        if seq.preemptions == 0:
            limit = min(limit, seq.prefix_blocks)
        refs, evictable = self.refs, self.evictable
        hit_keys: list[int] = []
        for j in range(limit):
            key = self._key(seq, j)
            if key in refs or key in evictable:
                hit_keys.append(key)
            else:
                break
        return hit_keys

    def _take_blocks(self, seq: Seq, hit_keys: list[int], need: int) -> None:
        """Give an admitted sequence its cached blocks (referenced, or taken back from the
        evictable ones) followed by `need` new private ones; the caller checked they fit."""
        refs, evictable = self.refs, self.evictable
        for key in hit_keys:
            if key in refs:
                refs[key] += 1
            else:
                del evictable[key]
                refs[key] = 1
        self._alloc(need)
        seq.blocks = hit_keys + [None] * need
        seq.nhashed = len(hit_keys)

    def _run_chunks(self, s: int, chunks: list[tuple[Seq, int, int]], t: _Tally) -> None:
        """Account the step's prefill chunks: the hardware model's inputs (tokens computed, their
        context read from the sequence's own KV or from cache hits, attention pairs), the
        recomputation, and the prefills that complete."""
        prefill = own = hit = recomputed = 0
        pairs = 0.0
        for seq, k, c in chunks:
            prefill += k
            h = seq.hit_tokens
            hit += h
            own += c - h
            pairs += k * c + k * (k + 1) / 2
            # Prompt tokens computed for the first time; the rest of the chunk is recomputation
            # after a preemption (the resumed sequence's last sampled token included).
            end = c + k
            lo = c if c > seq.high else seq.high
            hi = end if end < seq.prompt else seq.prompt
            if hi > lo:
                recomputed += k - (hi - lo)
                seq.high = hi
            else:
                recomputed += k
            seq.computed = end
            if end == seq.target:
                self._prefill_done(seq, s, end, t)
        t.prefill, t.own, t.hit, t.pairs, t.recomputed = prefill, own, hit, pairs, recomputed

    def _prefill_done(self, seq: Seq, s: int, c: int, t: _Tally) -> None:
        """A prefill completes: this step emits its token (the request's first one, unless the
        prefill recomputed a preempted sequence); then it finishes or decodes from the next step."""
        seq.out += 1
        t.emitted += 1
        if seq.out == 1:
            t.prompt_credit += seq.prompt
            t.cached_credit += seq.first_hits
            if t.first_tokens is None:
                t.first_tokens = []
            t.first_tokens.append(seq)
        del self.prefilling[seq.rid]
        if seq.out >= seq.output_len:
            if t.finished is None:
                t.finished = []
            self._finish(seq, c, t.finished)
            return
        s0 = s + 1
        seq.s0, seq.c0 = s0, c
        seq.state = DECODE
        self.decoding[seq.rid] = seq
        self._dec_a += c - s0
        heap = self.heap
        heappush(heap, (s0 + (-c) % self.bs, _NEED_BLOCK, seq.rid, seq, seq.epoch))
        heappush(heap, (s0 + seq.output_len - seq.out - 1, _FINISH, seq.rid, seq, seq.epoch))

    def _finish_decodes(self, s: int, t: _Tally) -> None:
        """Decoding sequences emitting their last token this step (this step's block grants left
        the heap before scheduling, so what remains due now are finishes)."""
        heap = self.heap
        while heap and heap[0][0] == s:
            _, _, _, seq, epoch = heappop(heap)
            if seq.epoch != epoch:
                continue
            done = s - seq.s0 + 1
            seq.out += done
            del self.decoding[seq.rid]
            self._dec_a -= seq.c0 - seq.s0
            if t.finished is None:
                t.finished = []
            self._finish(seq, seq.c0 + done, t.finished)

    def _result(self, s: int, t: _Tally, chunks: int, preempted: int, admitted: tuple[int, int, int]) -> StepResult:
        queries, query_hits, first_hits = admitted
        cost = self.hw.step(t.prefill, t.decode, t.own, t.hit, t.pairs, t.decode_context)
        return StepResult(
            cost,
            s,
            t.prefill,
            t.recomputed,
            t.decode,
            chunks,
            t.emitted,
            t.prompt_credit,
            t.cached_credit,
            t.first_tokens or _NONE,
            preempted,
            queries,
            query_hits,
            first_hits,
            t.finished or _NONE,
            len(self.running),
            len(self.waiting),
            self.used_blocks / self.num_blocks,
            t.decode_context,
        )

    def _finish(self, seq: Seq, computed: int, finished: list[Seq]) -> None:
        self._free(seq, computed)
        del self.running[seq.rid]
        seq.state = DONE
        seq.epoch += 1
        finished.append(seq)


__all__ = ["Engine", "EngineConfig", "Seq", "StepResult"]
