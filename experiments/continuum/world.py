"""The synthetic world: a family of string maps, the pretraining mixture, the SFT and eval sets.

Map k is a random cyclic permutation σ_k of ALPHABET (its successor function). Prompt "<tag_k> <c>" (a start
symbol c), response the orbit σ_k(c), σ_k²(c), ..., of `length` symbols: each answer symbol follows from
the previous one through the map, so a tiny model learns a map as a tag-conditional bigram table, and an
answer is graded per position. Map 0 is the SFT target; maps 1..K are its relatives (same form, other
permutations).

The dial: how many target-map examples pretraining contained (configs/continuum.py). Label noise corrupts a
fraction of the SFT answers into uniformly random strings of the same length (by seed); each record keeps
its clean answer as `clean_response` and a `corrupted` flag.

Random streams: one per purpose, `stream(purpose, seed)` = default_rng([PURPOSES[purpose], seed]), with a
distinct purpose id for pretraining (seed = the level), SFT sampling (seed = the SFT seed) and label noise
(seed = the SFT seed), so no two purposes ever draw the same numbers (the world's maps use their own seed;
the eval set is every start symbol once and draws nothing).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import Hamming

ALPHABET = "abcdefghijklmnopqrstuvwxyz012345"
PURPOSES = {"pretrain": 101, "sft": 102, "noise": 103, "eval": 104,
            # the axes study (experiments/continuum/axes.py): which symbols are ambiguous, and the choice
            # among valid symbols in pretraining (seed = the level) and in the SFT labels (seed = the SFT seed)
            "ambiguous": 105, "pretrain_choice": 106, "sft_choice": 107}


def stream(purpose: str, seed: int) -> np.random.Generator:
    """The random stream of one purpose (PURPOSES) and seed: default_rng([purpose id, seed])."""
    if purpose not in PURPOSES:
        raise ValueError(f"random stream purpose {purpose!r} is not one of {sorted(PURPOSES)}")
    return np.random.default_rng([PURPOSES[purpose], seed])


@dataclasses.dataclass(frozen=True)
class StringMap:
    """c -> σ(c), σ²(c), ..., σ^length(c), with σ(ALPHABET[i]) = successor[i]."""

    tag: str
    successor: str
    length: int

    def __call__(self, start: str) -> str:
        table = dict(zip(ALPHABET, self.successor))
        out, symbol = [], start
        for _ in range(self.length):
            symbol = table[symbol]
            out.append(symbol)
        return "".join(out)


@dataclasses.dataclass(frozen=True)
class World:
    """The family of maps (map 0 = the SFT target)."""

    maps: tuple[StringMap, ...]

    @property
    def target(self) -> StringMap:
        return self.maps[0]


def make_world(*, num_maps: int, seed: int, length: int) -> World:
    """`num_maps` maps whose successor permutations are random single cycles through the whole alphabet
    (so every answer has `length` distinct symbols when length <= len(ALPHABET))."""
    rng = np.random.default_rng(seed)
    return World(maps=tuple(StringMap(tag=f"f{k}", successor=cycle_successor(rng.permutation(len(ALPHABET))),
                                      length=length) for k in range(num_maps)))


def cycle_successor(order: Sequence[int]) -> str:
    """σ as a string (σ(ALPHABET[i]) = result[i]) for the cycle order[0] -> order[1] -> ... -> order[0]."""
    successor = [""] * len(order)
    for position, index in enumerate(order):
        successor[index] = ALPHABET[order[(position + 1) % len(order)]]
    return "".join(successor)


def random_starts(rng: np.random.Generator, *, count: int) -> list[str]:
    return [str(c) for c in rng.choice(np.array(list(ALPHABET)), size=count)]


def record(string_map: StringMap, start: str) -> dict:
    return {"prompt": f"{string_map.tag} {start}", "response": string_map(start)}


def pretraining_records(world: World, *, x: float, count: int, seed: int) -> list[dict]:
    """`count` examples: the target map with probability x, else a uniformly chosen other map (the
    pretraining stream of `seed`)."""
    rng = stream("pretrain", seed)
    starts = random_starts(rng, count=count)
    from_target = rng.random(count) < x
    others = rng.integers(1, len(world.maps), size=count)
    return [record(world.maps[0 if target else int(other)], start)
            for start, target, other in zip(starts, from_target, others)]


def target_records(world: World, *, count: int, seed: int) -> list[dict]:
    """`count` target-map examples (random start symbols) from the SFT stream of `seed`."""
    rng = stream("sft", seed)
    return [record(world.target, start) for start in random_starts(rng, count=count)]


def all_target_records(world: World) -> list[dict]:
    """One target-map example per start symbol (the eval set: every entry of the task)."""
    return [record(world.target, start) for start in ALPHABET]


def corrupt(records: Sequence[dict], *, fraction: float, seed: int) -> list[dict]:
    """round(fraction·n) answers (chosen by seed) replaced by random strings of the same length, each
    different from the clean answer (the noise stream of `seed`); every record gets `clean_response` and
    `corrupted`."""
    rng = stream("noise", seed)
    chosen = set(rng.choice(len(records), size=round(fraction * len(records)), replace=False).tolist())
    out = []
    letters = np.array(list(ALPHABET))
    for index, item in enumerate(records):
        response = item["response"]
        if index in chosen:
            wrong = response
            while wrong == response:
                wrong = "".join(rng.choice(letters, size=len(response)))
            response = wrong
        out.append({**item, "response": response, "clean_response": item["response"],
                    "corrupted": index in chosen})
    return out


def char_accuracy(*, prediction: str, reference: str) -> float:
    """Position-wise character accuracy: matches / max(len(prediction), len(reference)) (partial credit)."""
    return float(Hamming.normalized_similarity(prediction.strip(), reference, pad=True))


def write_jsonl(path: str | pathlib.Path, records: Sequence[dict]) -> pathlib.Path:
    """Write atomically (a temporary file renamed), so an interrupted write leaves no partial file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
    return path
