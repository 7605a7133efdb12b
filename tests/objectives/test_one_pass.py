"""The statistics every objective needs come from one loop over each chunk's logits.

Reads XLA's optimised HLO: the reductions whose reduced dimension is the vocabulary must be exactly one
max (for the shift) and ONE variadic sum (Σe, Σe², Σe·z and the max count together), in the naive and
the chunked path, forward and backward, for NLL and DEFT alike (the logged entropy and Σπ² included),
so that DEFT and the metrics add no pass over the logits that NLL does not make.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.objectives import fused
from deft_jax import objectives
from deft_jax.training import xla_options

TOKENS, D_MODEL, VOCAB, CHUNK = 48, 8, 1024, 16  # no TOKENS x 16 = VOCAB coincidence
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)")


def _dims(shape: str) -> list[int]:
    match = re.search(r"\[([\d,]*)\]", shape)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def vocabulary_reductions(hlo: str, *, vocab: int) -> list[tuple[str, int]]:
    """(reducer computation's ops, number of reduced operands) for every `reduce` in the HLO text over the
    last axis of an array [..., V] or [..., B, V/B] (the vocabulary summed in B blocks), e.g. ("add", 4)
    for a variadic sum of four arrays."""
    shapes, computations, found = {}, {}, []
    current = None
    for line in hlo.splitlines():
        header = re.match(r"\s*(?:ENTRY )?%([\w.\-]+) \(", line)
        if header and line.rstrip().endswith("{"):
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, op, rest = match.groups()
        shapes[name] = shape
        if op not in ("parameter", "tuple"):
            computations.setdefault(current, set()).add(op)
        if op == "reduce":
            operands = re.findall(r"%([\w.\-]+)", rest.split(", dimensions=")[0])
            reduced = [int(d) for d in re.search(r"dimensions=\{([\d,]*)\}", rest).group(1).split(",") if d]
            source = _dims(shapes.get(operands[0], ""))
            # The vocabulary itself, or its last part when the sum runs over [..., blocks, V / blocks].
            whole = reduced == [len(source) - 1] and (
                source[-1] == vocab or (len(source) >= 2 and source[-2] * source[-1] == vocab and source[-2] > 1))
            if whole:
                found.append((re.search(r"to_apply=%([\w.\-]+)", rest).group(1), len(operands) // 2))
    return [("+".join(sorted(computations.get(reducer, ()))), count) for reducer, count in found]


def _compiled_hlo(name: str, impl: str) -> str:
    def loss(hidden, weight, targets, mask):
        if impl == "naive":
            out = fused.compute_naive(name, hidden, weight, targets, mask)
        else:
            out = fused.compute_chunked(name, hidden, weight, targets, mask, chunk_size=CHUNK)
        total, denominator = objectives.reduce_output(out)
        logged = {key: pair[0] for key, pair in objectives.token_metrics(out, mask).items()}
        return total / denominator, logged

    args = (jnp.zeros((TOKENS, D_MODEL)), jnp.zeros((D_MODEL, VOCAB)), jnp.zeros((TOKENS,), jnp.int32),
            jnp.ones((TOKENS,)))
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                   compiler_options=xla_options.compiler_options())
    return step.lower(*args).compile().as_text()


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("name", ["nll", "deft"])
def test_one_max_and_one_fused_sum_over_the_vocabulary(name, impl):
    reductions = sorted(vocabulary_reductions(_compiled_hlo(name, impl), vocab=VOCAB))
    # (add, 4): count of max entries, Σ_rest e, Σ_rest e², Σ e·(z − max) in one loop; (maximum, 1): the shift.
    assert reductions == [("add", 4), ("maximum", 1)], reductions


def test_the_hlo_reader_sees_separate_sums():
    """The reader itself: separate jnp.sum calls over the vocabulary are counted one by one."""
    def separate(z):
        return jnp.max(z, axis=-1), jnp.sum(jnp.exp(z), axis=-1), jnp.sum(jnp.exp(2 * z), axis=-1)

    hlo = jax.jit(separate).lower(jnp.zeros((4, VOCAB))).compile().as_text()
    assert sorted(vocabulary_reductions(hlo, vocab=VOCAB)) == [("add", 1), ("add", 1), ("maximum", 1)]


def test_compiler_options_keep_inf_and_nan():
    """The options only reassociate: a NaN or an inf in a sum still comes out, and the step's
    non-finite check still sees it (plain fast-math would let XLA assume neither exists)."""
    options = xla_options.compiler_options(backend="cpu")
    assert xla_options.compiler_options(backend="gpu") == {}

    def checked_sum(x):
        total = jnp.sum(x * x)
        return total, jnp.isfinite(total)

    program = jax.jit(checked_sum, compiler_options=options)
    values = jnp.arange(4096, dtype=jnp.float32) / 4096
    total, finite = program(values)
    assert bool(finite) and abs(float(total) - float(np.sum(np.asarray(values, np.float64) ** 2))) < 1e-3
    for bad, expect_nan in ((jnp.nan, True), (jnp.inf, False)):
        total, finite = program(values.at[7].set(bad))
        assert not bool(finite)
        assert bool(jnp.isnan(total)) == expect_nan
