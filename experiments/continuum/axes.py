"""The continuum's other axes: generalisation through the prior, retention, and valid alternatives.

The world is experiments/continuum/world.py's (map 0 = the SFT target, maps 1..K its relatives); this
module adds, for the axes study (experiments/continuum/axes_run.py):

Entries and the split. Write the target's cycle from ALPHABET[0]: o_0 -> o_1 -> ... -> o_31 -> o_0. Entry
o_k (prompt start o_k) answers o_{k+1} ... o_{k+8}, so it uses the transitions out of o_k ... o_{k+7}.
    fit entries   o_0 .. o_{F−1}                (the SFT set samples its starts from these only)
    gen entries   o_k with k ≥ F + 7 and k + 7 ≤ 31   (none of their transitions is in any SFT answer)
so a generalisation entry can only be answered from what pretraining taught (the prior), never from SFT.
    retention     every start of maps 1..K (the pretraining tasks the model already knew)

Ambiguity (the dial a). Each symbol s has one alias ALIASES[s] (a symbol outside ALPHABET). A fraction a of
the target's symbols (nested in a: the first round(a·32) of one fixed permutation, the `ambiguous` stream)
are ambiguous: wherever the canonical answer has s, writing s or its alias is equally correct, and the
answer continues from σ(s) either way. Pretraining writes the preferred symbol (s itself) with probability
PREFERENCE and the alias otherwise (a consistent preference, so the model has a prior among the valid
choices); SFT labels pick uniformly among the valid symbols; the score accepts any valid symbol.

Measured ambiguity of generated data (`measured_ambiguity`): the fraction of answer positions whose context
(prompt tag, previous symbol) is followed by more than one symbol in the data, and the empirical conditional
entropy H(next | tag, previous) in bits.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from experiments.continuum import world as world_lib

ALPHABET = world_lib.ALPHABET
ALIASES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ6789@#"
ALIAS = dict(zip(ALPHABET, ALIASES))
CANONICAL = {alias: symbol for symbol, alias in ALIAS.items()}
PREFERENCE = 0.75  # pretraining's probability of the preferred symbol at an ambiguous position
FIT_ENTRIES = 10   # F: the first F starts of the target's cycle are the SFT task's seen entries


@dataclasses.dataclass(frozen=True)
class Axes:
    """The split of the target's entries and the ambiguous symbols at dial setting `ambiguity`."""

    world: world_lib.World
    ambiguity: float
    ambiguous: frozenset
    order: tuple[str, ...]  # the target's cycle from ALPHABET[0]

    @property
    def fit_starts(self) -> tuple[str, ...]:
        return self.order[:FIT_ENTRIES]

    @property
    def gen_starts(self) -> tuple[str, ...]:
        length = self.world.target.length
        return tuple(self.order[k] for k in range(FIT_ENTRIES + length - 1, len(self.order) - length + 1))

    def valid(self, symbol: str) -> tuple[str, ...]:
        """The symbols equally correct where the canonical answer has `symbol` (preferred first)."""
        return (symbol, ALIAS[symbol]) if symbol in self.ambiguous else (symbol,)


def cycle_order(string_map: world_lib.StringMap) -> tuple[str, ...]:
    table = dict(zip(ALPHABET, string_map.successor))
    order, symbol = [ALPHABET[0]], table[ALPHABET[0]]
    while symbol != ALPHABET[0]:
        order.append(symbol)
        symbol = table[symbol]
    return tuple(order)


def ambiguous_symbols(*, ambiguity: float) -> frozenset:
    """The first round(ambiguity·|ALPHABET|) symbols of one fixed permutation (nested in the dial)."""
    if not 0.0 <= ambiguity <= 1.0:
        raise ValueError(f"ambiguity={ambiguity} must lie in [0, 1]")
    order = world_lib.stream("ambiguous", 0).permutation(len(ALPHABET))
    return frozenset(ALPHABET[i] for i in order[:round(ambiguity * len(ALPHABET))])


def make_axes(world: world_lib.World, *, ambiguity: float) -> Axes:
    return Axes(world=world, ambiguity=ambiguity, ambiguous=ambiguous_symbols(ambiguity=ambiguity),
                order=cycle_order(world.target))


def realise(answer: str, *, axes: Axes, rng: np.random.Generator, preference: float | None) -> str:
    """`answer` (canonical) with each ambiguous symbol written as one of its valid symbols: the preferred
    one with probability `preference`, or uniformly among them when `preference` is None."""
    out = []
    for symbol in answer:
        choices = axes.valid(symbol)
        if len(choices) == 1:
            out.append(symbol)
        elif preference is None:
            out.append(choices[int(rng.integers(len(choices)))])
        else:
            out.append(choices[0] if rng.random() < preference else choices[1])
    return "".join(out)


def pretraining_records(axes: Axes, *, x: float, count: int, seed: int) -> list[dict]:
    """world.pretraining_records (the pretraining stream of `seed`), the target map's answers written with
    the pretraining preference (the pretrain_choice stream of `seed`)."""
    rng = world_lib.stream("pretrain_choice", seed)
    target = axes.world.target.tag
    records = world_lib.pretraining_records(axes.world, x=x, count=count, seed=seed)
    return [{**r, "response": realise(r["response"], axes=axes, rng=rng, preference=PREFERENCE)}
            if r["prompt"].split()[0] == target else r for r in records]


def sft_records(axes: Axes, *, count: int, seed: int) -> list[dict]:
    """`count` target examples with starts drawn from the fit entries (the sft stream of `seed`), labels
    uniform among the valid symbols (the sft_choice stream of `seed`)."""
    starts = world_lib.stream("sft", seed).choice(np.array(axes.fit_starts), size=count)
    rng = world_lib.stream("sft_choice", seed)
    records = [world_lib.record(axes.world.target, str(start)) for start in starts]
    return [{**r, "response": realise(r["response"], axes=axes, rng=rng, preference=None)} for r in records]


def eval_sets(axes: Axes) -> dict[str, list[dict]]:
    """{'fit', 'gen', 'retention'}: canonical answers (clean_response = response) of each score's entries."""
    target = axes.world.target
    sets = {"fit": [world_lib.record(target, s) for s in axes.fit_starts],
            "gen": [world_lib.record(target, s) for s in axes.gen_starts],
            "retention": [world_lib.record(m, s) for m in axes.world.maps[1:] for s in ALPHABET]}
    return {name: [{**r, "clean_response": r["response"]} for r in records] for name, records in sets.items()}


def canonical_prediction(prediction: str, reference: str, *, axes: Axes) -> str:
    """`prediction` with every position holding a valid alternative of the reference's symbol rewritten as
    the reference's symbol."""
    chars = list(prediction.strip())
    for j, (got, want) in enumerate(zip(chars, reference)):
        if got != want and got in axes.valid(want):
            chars[j] = want
    return "".join(chars)


def score(*, prediction: str, reference: str, axes: Axes) -> float:
    """world.char_accuracy with any valid symbol accepted at each position."""
    return world_lib.char_accuracy(prediction=canonical_prediction(prediction, reference, axes=axes),
                                   reference=reference)


def measured_ambiguity(records: Sequence[dict]) -> dict[str, float]:
    """From generated data alone: the fraction of answer positions whose context (tag, previous symbol;
    the start symbol for the first) is followed by more than one symbol anywhere in `records`, and the
    empirical conditional entropy H(next | context) in bits over answer positions."""
    follows = defaultdict(Counter)
    positions = []
    for r in records:
        tag, start = r["prompt"].split()
        previous = start
        for symbol in r["response"]:
            follows[(tag, previous)][symbol] += 1
            positions.append((tag, previous))
            previous = symbol
    if not positions:
        return {"ambiguous_fraction": float("nan"), "conditional_entropy_bits": float("nan")}
    several = sum(len(follows[c]) > 1 for c in positions) / len(positions)
    total = len(positions)
    entropy = 0.0
    for counts in follows.values():
        n = sum(counts.values())
        entropy -= sum(k / total * math.log2(k / n) for k in counts.values())
    return {"ambiguous_fraction": float(several), "conditional_entropy_bits": float(entropy)}
