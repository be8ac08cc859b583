"""Continuous batching: a row that is done hands its slot to the next prompt, and every prompt
still gets exactly the text it gets alone."""

from __future__ import annotations

import functools

import pytest
import torch

from tinystudent.evaluation.generative import generate_in_batches
from tinystudent.models import generation, load_model
from tinystudent.models.generation import RowParams, generate_rows
from tinystudent.models.slot_cache import SlotCache


def _prompts(loaded, shared: bool) -> list[list[int]]:
    shots = "".join(f"Q: What is {n} + 1?\nA: The answer is {n + 1}.\n\n" for n in range(10, 20)) if shared else ""
    texts = [f"{shots}Q: What is {n} + 1?\nA:" for n in (41, 7, 300, 12, 5, 999, 3)]
    texts.append("yes no maybe so" if not shared else f"{shots}Q: ")
    return [loaded.tokenizer.encode(t, add_special_tokens=False) for t in texts]


def _decoding_widths(model) -> list[int]:
    """Records the number of rows of every one-token decoding step."""
    widths: list[int] = []
    forward = model.forward

    @functools.wraps(forward)  # the same signature: the cache argument and logits_to_keep are found
    def counted(*args, **kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            widths.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    model.forward = counted
    return widths


@pytest.mark.parametrize("shared", [True, False])
def test_refilled_slots_write_what_each_prompt_writes_alone(tiny_causal, shared):
    """Eight prompts (with and without few-shot exemplars in common, one of them a single token
    past the shared part) through three slots, rows of different limits and stops, greedy and
    sampled: each writes what it writes in a batch of its own, and the batch stays full while
    prompts wait."""
    loaded = load_model(str(tiny_causal))
    ids = _prompts(loaded, shared)
    rows = [
        RowParams(limit, 1.0 if i % 3 == 0 else 0.0, seed=i, stop=("Q:",) if i % 2 else ())
        for i, limit in enumerate((9, 2, 14, 5, 1, 11, 3, 7))
    ]
    alone = [generate_rows(loaded.model, loaded.tokenizer, "causal", [p], [r])[0] for p, r in zip(ids, rows)]
    widths = _decoding_widths(loaded.model)
    together = dict(generate_in_batches(loaded.model, loaded.tokenizer, "causal", ids, rows, batch_size=3))
    assert [together[i].token_ids for i in range(len(ids))] == [a.token_ids for a in alone]
    assert [together[i].text for i in range(len(ids))] == [a.text for a in alone]
    # full (three rows) until no prompt waits, then shrinking as the last rows are done
    assert widths[0] == 3 and widths == sorted(widths, reverse=True)
    assert len(widths) < sum(len(a.token_ids) for a in alone) / 2  # rows shared decoding steps


def test_the_slot_cache_drops_columns_no_row_uses(tiny_causal):
    """After rows leave and shorter ones take their slots, the cache is as wide as its longest
    row, and its mask says which columns each row reads."""
    loaded = load_model(str(tiny_causal))
    model = loaded.model
    cache = SlotCache(2, "cpu")
    long, short = [5, 6, 7, 8, 9, 10, 11], [12, 13, 14]
    for slot, ids in enumerate((long, short)):
        row = _cache_of(model, ids)
        cache.place([slot], row, torch.ones((1, len(ids)), dtype=torch.long))
    assert cache.width == len(long) and cache.get_seq_length() == len(long)
    assert cache.mask.tolist() == [[1] * 7, [0] * 4 + [1] * 3]
    cache.keep([1])
    assert cache.width == 3 and cache.get_seq_length() == 3 and cache.mask.tolist() == [[1, 1, 1]]
    keys = cache.layers[0].keys
    assert torch.equal(keys, _cache_of(model, short).layers[0].keys)


def _cache_of(model, ids: list[int]):
    from transformers import DynamicCache

    cache = DynamicCache()
    name = generation._cache_argument(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), use_cache=True, **{name: cache})
    return cache
