"""The harness itself: a real vLLM server starts, serves, counts tokens exactly, and stops.

The exporter's end-to-end tests rest on these facts about vLLM 0.32's counters, so they are pinned
here against the real server rather than assumed.
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.vllm_server import (
    VllmServer,
    VllmServerError,
    complete_concurrently,
    port_is_listening,
)

PROMPT = "vllm:prompt_tokens_total"
GENERATION = "vllm:generation_tokens_total"
CACHED = "vllm:prompt_tokens_cached_total"
ITERATIONS = "vllm:iteration_tokens_total_count"


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def test_completions_move_the_token_counters_by_exactly_what_was_served(vllm_server: VllmServer):
    n_requests, max_tokens = 6, 16
    # Distinct prompts, each shorter than one KV block: no prefix cache hit is possible.
    prompts = [f"Request {i}: def handler_{i}(event, context): return {i} * x" for i in range(6)]
    before = vllm_server.counters()

    responses = complete_concurrently(vllm_server, prompts, max_tokens=max_tokens, concurrency=4)

    assert [r["usage"]["completion_tokens"] for r in responses] == [max_tokens] * n_requests
    assert all(r["choices"][0]["finish_reason"] == "length" for r in responses)
    assert all(r["model"] == "tiny-llama" for r in responses)
    prompt_tokens = sum(r["usage"]["prompt_tokens"] for r in responses)
    assert prompt_tokens > n_requests

    after = vllm_server.wait_counters(lambda c: c[GENERATION] - before[GENERATION] >= n_requests * max_tokens)
    moved = delta(after, before)
    assert moved[GENERATION] == n_requests * max_tokens == 96
    assert moved[PROMPT] == prompt_tokens
    assert moved[CACHED] == 0
    # One engine step yields at most one token per running request, and at most 4 run at once.
    assert n_requests * max_tokens / 4 <= moved[ITERATIONS] <= n_requests * max_tokens


def test_prefix_cache_hits_stay_inside_prompt_tokens_in_whole_blocks(vllm_server: VllmServer):
    block = vllm_server.kv_block_size()
    # A unique start so nothing earlier in the session can be cached; ~2 blocks long.
    prompt = f"# {uuid.uuid4().hex}\n" + "def double(x):\n    return x * 2\n\n" * 20
    before = vllm_server.counters()

    first = vllm_server.complete(prompt, max_tokens=4)
    n = first["usage"]["prompt_tokens"]
    assert block < n < 512
    mid = vllm_server.wait_counters(lambda c: c[GENERATION] - before[GENERATION] >= 4)
    second = vllm_server.complete(prompt, max_tokens=4)
    assert second["usage"]["prompt_tokens"] == n
    after = vllm_server.wait_counters(lambda c: c[GENERATION] - mid[GENERATION] >= 4)

    assert delta(mid, before)[PROMPT] == n
    assert delta(mid, before)[CACHED] == 0
    # The repeat is counted in full as prompt tokens, and the whole blocks it shares with the
    # first (all but the last token may hit) are counted again as cached.
    assert delta(after, mid)[PROMPT] == n
    assert delta(after, mid)[CACHED] == (n - 1) // block * block > 0


def test_a_prompt_longer_than_max_model_len_is_refused_and_not_counted(vllm_server: VllmServer):
    before = vllm_server.counters()
    with pytest.raises(VllmServerError, match="400"):
        vllm_server.complete("word " * 2000, max_tokens=4)
    assert vllm_server.counters() == before


def test_stop_by_pid_frees_the_port_and_a_restart_counts_from_zero(make_vllm_server):
    server = make_vllm_server().start()
    server.wait_ready()
    server.complete("hello", max_tokens=8)
    server.wait_counters(lambda c: c[GENERATION] >= 8)
    pid, port = server.pid, server.port
    assert len(server.live_pids()) >= 2  # the API server and its engine core, at least

    assert server.stop() == 0
    assert server.live_pids() == []
    assert not port_is_listening(port)
    assert server.stop() == 0  # idempotent

    # Same port, new process: every counter starts again from zero (a reset a scraper must see).
    server.start()
    assert server.pid != pid and server.port == port
    server.wait_ready()
    assert server.counters() == {PROMPT: 0, GENERATION: 0, CACHED: 0, ITERATIONS: 0}

    server.kill()  # as a crash would
    assert server.live_pids() == []
    assert not port_is_listening(port)
