"""The waiting queue's weighted fair sharing across tenants, per-tenant limits and priorities.

Driven directly (push, then admit one at a time), so the admission order is exact.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from engine_fakes import CharacterCodec, FakeRunner, RecordingObserver

from modelplane_server.engine.contract import (
    GenerationConfig,
    GenerationRequest,
    QueueFullError,
    SamplingParams,
    TenantQueueFullError,
)
from modelplane_server.engine.fair_share import TenantPolicy
from modelplane_server.engine.generation import ContinuousBatchingEngine
from modelplane_server.engine.sequence import GenerationSequence, SequenceState
from modelplane_server.engine.waiting_queue import WaitingQueue

_ids = itertools.count()


def sequence(
    tenant: str, priority: int = 0, prompt: int = 10, max_tokens: int = 10
) -> GenerationSequence:
    request = GenerationRequest(
        request_id=f"{tenant}-{next(_ids)}",
        prompt_token_ids=(1,) * prompt,
        params=SamplingParams(max_tokens=max_tokens),
        priority=priority,
        arrival_time=time.monotonic(),
        tenant=tenant,
    )
    return GenerationSequence(
        next(_ids), request, max_tokens, frozenset(), asyncio.get_running_loop()
    )


def queue(**tenants: TenantPolicy) -> WaitingQueue:
    waiting = WaitingQueue(max_requests=1000, max_prompt_tokens=1_000_000, tenants=tenants)
    waiting.set_accepting(True)
    return waiting


def admit_order(waiting: WaitingQueue, count: int) -> list[str]:
    """The tenants of the next `count` admissions, one per step."""
    order = []
    for _ in range(count):
        admitted, _ = waiting.admit(budget=10_000, free_rows=1, chunking=False)
        order += [s.request.tenant for s in admitted]
    return order


async def test_backlogged_tenants_are_admitted_in_proportion_to_their_shares() -> None:
    waiting = queue(a=TenantPolicy(share=3), b=TenantPolicy(share=1))
    for _ in range(60):  # b's requests arrive first: shares, not arrival, decide
        assert waiting.push(sequence("b")) is None
    for _ in range(60):
        assert waiting.push(sequence("a")) is None
    order = admit_order(waiting, 40)
    assert order.count("a") == 30
    # Interleaved, not in runs: every four admissions hold one of b's.
    assert all(order[i : i + 4].count("b") == 1 for i in range(0, 40, 4))


async def test_a_tenant_alone_gets_everything_and_banks_no_credit_while_idle() -> None:
    waiting = queue(a=TenantPolicy(share=1), b=TenantPolicy(share=1))
    for _ in range(20):
        waiting.push(sequence("a"))
    assert admit_order(waiting, 10) == ["a"] * 10  # b is idle: a takes every slot
    for _ in range(10):
        waiting.push(sequence("b"))
    # b arrives late: equal shares from now on, and a is not made to wait for b's "missed" turns.
    order = admit_order(waiting, 10)
    assert order.count("b") == 5
    assert "a" in order[:3]


async def test_priority_orders_requests_within_a_tenant_only() -> None:
    waiting = queue(a=TenantPolicy(), b=TenantPolicy())
    low = sequence("a", priority=5)
    high = sequence("a", priority=0)
    b_low = sequence("b", priority=9)
    for item in (low, high, b_low):
        waiting.push(item)
    admitted = []
    for _ in range(3):
        admitted += waiting.admit(budget=10_000, free_rows=1, chunking=False)[0]
    # a's urgent request overtakes a's other, but b's turn is not taken by a's priorities.
    assert admitted == [high, b_low, low]


async def test_a_tenant_at_its_limit_is_refused_while_another_is_still_queued() -> None:
    waiting = queue(a=TenantPolicy(max_queue=2), b=TenantPolicy(max_queue_tokens=15))
    assert waiting.push(sequence("a")) is None
    assert waiting.push(sequence("a")) is None
    refusal = waiting.push(sequence("a"))
    assert refusal is not None
    assert (refusal.reason, refusal.tenant_limit) == ("tenant_queue_full", True)
    assert "tenant 'a' has 2 requests waiting (its limit is 2)" in refusal.message
    assert waiting.push(sequence("b")) is None
    refusal = waiting.push(sequence("b", prompt=6))
    assert refusal is not None
    assert refusal.reason == "tenant_queue_tokens_full"
    assert waiting.push(sequence("default")) is None
    assert waiting.waiting_by_tenant() == {"a": 2, "b": 1, "default": 1}


async def test_the_servers_limit_is_reported_as_the_servers() -> None:
    waiting = WaitingQueue(
        max_requests=2, max_prompt_tokens=1000, tenants={"a": TenantPolicy(max_queue=5)}
    )
    waiting.set_accepting(True)
    waiting.push(sequence("a"))
    waiting.push(sequence("b"))
    refusal = waiting.push(sequence("a"))
    assert refusal is not None
    assert (refusal.reason, refusal.tenant_limit) == ("queue_full", False)


async def test_a_request_that_finished_while_queued_leaves_its_tenants_counts() -> None:
    waiting = queue(a=TenantPolicy(max_queue=1))
    first = sequence("a")
    waiting.push(first)
    waiting.remove(first)
    first.state = SequenceState.FINISHED
    assert waiting.push(sequence("a")) is None
    assert admit_order(waiting, 2) == ["a"]


async def test_requests_cancelled_while_queued_do_not_pile_up_while_nothing_is_admitted() -> None:
    """With the batch full nothing is admitted, so no head is pruned: the heap is rebuilt once
    its dead entries outnumber the live ones, and the live ones keep their order."""
    waiting = queue()
    kept = [sequence("a", priority=p) for p in (2, 1)]
    for live in kept:
        waiting.push(live)
    for _ in range(1000):
        cancelled = sequence("a", priority=0)
        waiting.push(cancelled)
        waiting.remove(cancelled)
        cancelled.state = SequenceState.FINISHED
    assert len(waiting.queued()) <= 2 * len(kept) + 64 + 1
    assert sorted(s.seq_id for s in waiting.waiting()) == sorted(s.seq_id for s in kept)
    admitted, _ = waiting.admit(budget=10_000, free_rows=2, chunking=False)
    assert admitted == [kept[1], kept[0]]


async def test_the_engine_raises_the_tenant_limit_and_reports_the_tenant() -> None:
    observer = RecordingObserver()
    engine = ContinuousBatchingEngine(
        FakeRunner(),
        CharacterCodec(64),
        GenerationConfig(max_queue=10),
        eos_token_ids=[ord("#")],
        observer=observer,
        tenants={"a": TenantPolicy(max_queue=1)},
    )
    # Not started: nothing is admitted, so everything pushed stays queued.
    engine._steps.waiting.set_accepting(True)
    request = GenerationRequest("r", (104, 105), SamplingParams(max_tokens=1), tenant="a")
    engine.generate(request)
    with pytest.raises(TenantQueueFullError) as raised:
        engine.generate(request)
    assert isinstance(raised.value, QueueFullError)
    assert "tenant 'a'" in str(raised.value)
    await asyncio.sleep(0.01)
    assert (observer.rejected, observer.rejected_tenants) == (["tenant_queue_full"], ["a"])
    assert engine.stats().waiting_by_tenant == (("a", 1),)
