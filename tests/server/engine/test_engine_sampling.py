"""Per-row sampling in a mixed batch: each row honours its own settings and seed."""

from __future__ import annotations

import math

import torch

from modelplane_server.model.sampling import SamplingState, _filter_sorted

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
