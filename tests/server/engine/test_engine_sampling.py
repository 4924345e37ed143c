"""Per-row sampling in a mixed batch: each row honours its own settings and seed."""

from __future__ import annotations

import math

import pytest
import torch

from modelplane_server.engine.contract import SamplingParams
from modelplane_server.model.sampling import RowProcessor, SamplingState, _filter_sorted

CPU = torch.device("cpu")


def state_for(rows: list[dict[str, float | int | None]]) -> SamplingState:
    state = SamplingState(len(rows), CPU)
    state.set_rows(
        0,
        [float(row.get("temperature", 1.0) or 0.0) for row in rows],
        [float(row.get("top_p", 1.0) or 1.0) for row in rows],
        [int(row.get("top_k", 0) or 0) for row in rows],
        [None if row.get("seed") is None else int(row["seed"] or 0) for row in rows],
    )
    return state


def test_greedy_top_k_1_and_tiny_top_p_rows_all_pick_the_argmax() -> None:
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    state = state_for(
        [{"temperature": 0.0}, {"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "top_p": 0.5}]
    )
    assert torch.equal(state.sample(logits, 0), logits.argmax(dim=-1))


def test_seeded_rows_draw_the_same_tokens_whatever_their_neighbours() -> None:
    logits = torch.randn(1, 500, generator=torch.Generator().manual_seed(1))
    seeded = {"temperature": 1.0, "seed": 42}
    alone = int(state_for([seeded]).sample(logits, 0)[0])
    mixed_state = state_for([{"temperature": 0.7}, seeded, {"temperature": 0.0}, seeded])
    repeated = logits.repeat(4, 1)
    draws = mixed_state.sample(repeated, 0)
    assert int(draws[1]) == int(draws[3]) == alone
    assert int(draws[2]) == int(logits.argmax())
    # The generator advances: the next draw for the row is the next draw alone would make.
    second_alone = state_for([seeded])
    second_alone.sample(logits, 0)
    assert int(mixed_state.sample(repeated, 0)[1]) == int(second_alone.sample(logits, 0)[0])


def test_rows_are_addressed_from_first_row_and_survive_moves() -> None:
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(2))
    state = state_for([{"temperature": 0.0}, {"temperature": 0.0}, {"top_k": 1}])
    state.set_rows(1, [0.0, 1.0], [1.0, 1.0], [0, 1], [None, None])
    assert torch.equal(state.sample(logits, 1), logits.argmax(dim=-1))
    state.move_rows([2], [0])
    assert state.top_k[0].item() == 1


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]])
    sorted_logits = probabilities.log()
    kept = _filter_sorted(sorted_logits, torch.tensor([2, 0]), torch.tensor([1.0, 0.75]))
    finite = torch.isfinite(kept)
    assert finite[0].tolist() == [True, True, False, False]  # top-k 2
    assert finite[1].tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.75
    sampled_share = torch.softmax(kept[1], dim=-1)
    assert math.isclose(float(sampled_share[0]), 0.5 / 0.8, rel_tol=1e-5)


# --- logit processing: logit_bias, min_tokens and the penalties ----------------------------------


def processed_state(
    params: SamplingParams, prompt: tuple[int, ...] = (), stop_ids: tuple[int, ...] = ()
) -> SamplingState:
    state = SamplingState(1, CPU)
    processor = RowProcessor(params, prompt, stop_ids)
    state.set_rows(0, [0.0], [1.0], [0], [None], processors=[processor])
    return state


def test_logit_bias_can_force_or_ban_a_token() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(3))
    forced = processed_state(SamplingParams(temperature=0.0, logit_bias=((7, 100.0),)))
    assert int(forced.sample(logits.clone(), 0)[0]) == 7
    best = int(logits.argmax())
    banned = processed_state(SamplingParams(temperature=0.0, logit_bias=((best, -100.0),)))
    assert int(banned.sample(logits.clone(), 0)[0]) != best


def test_min_tokens_holds_back_stop_ids_until_enough_tokens_are_out() -> None:
    logits = torch.zeros(1, 10)
    logits[0, 2] = 5.0  # the stop id would win every step
    later = processed_state(SamplingParams(temperature=0.0, min_tokens=2), stop_ids=(2,))
    tokens = [int(later.sample(logits.clone(), 0)[0]) for _ in range(3)]
    assert 2 not in tokens[:2]
    assert tokens[2] == 2


def test_frequency_and_presence_penalties_follow_openais_definition() -> None:
    """logit - frequency * count - presence * (count > 0), over generated tokens only."""
    logits = torch.tensor([[3.0, 2.5, 0.0, 0.0]])
    frequency = processed_state(SamplingParams(temperature=0.0, frequency_penalty=0.3))
    # 3.0, then 2.7 > 2.5, then 2.4 < 2.5: token 0 twice, then token 1.
    assert [int(frequency.sample(logits.clone(), 0)[0]) for _ in range(3)] == [0, 0, 1]
    presence = processed_state(SamplingParams(temperature=0.0, presence_penalty=0.6))
    # One occurrence costs 0.6 once: 2.4 < 2.5, then token 1 (2.5 > 2.4), then both penalised.
    assert [int(presence.sample(logits.clone(), 0)[0]) for _ in range(3)] == [0, 1, 0]


def test_the_repetition_penalty_covers_the_prompt_and_scales_by_sign() -> None:
    logits = torch.tensor([[2.0, 1.5, -1.0, -1.2]])
    state = processed_state(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=(0,))
    # Token 0 is in the prompt: 2.0 / 2 = 1.0 < 1.5.
    assert int(state.sample(logits.clone(), 0)[0]) == 1
    negative = torch.tensor([[-1.0, -1.5, -3.0, -3.0]])
    state = processed_state(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=(0,))
    # Negative logits are multiplied: -1.0 * 2 = -2.0 < -1.5.
    assert int(state.sample(negative, 0)[0]) == 1


def test_logprobs_are_of_the_processed_logits_with_the_top_alternatives() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    state = processed_state(
        SamplingParams(temperature=0.0, logprobs=2, logit_bias=((3, 4.0),)), prompt=(0,)
    )
    token = int(state.sample(logits.clone(), 0)[0])
    processor = state.processors[0]
    assert processor is not None
    sampled = processor.sampled
    assert sampled is not None
    expected = torch.tensor([2.0, 1.0, 0.0, 3.0]).log_softmax(dim=-1)  # after the bias
    assert token == 3
    assert sampled.logprob == pytest.approx(float(expected[3]))
    assert [index for index, _ in sampled.top] == [3, 0]
    assert sampled.top[1][1] == pytest.approx(float(expected[0]))
