"""experiments/bench_continuous.py: the delivered-token count of transformers' output rows, by hand."""
import numpy as np

from experiments import bench_continuous


def test_delivered_counts_new_tokens_up_to_the_first_stop():
    prompt = [[0, 0, 5], [0, 6, 7], [8, 9, 9]]
    new = [[3, 4, 2, 2, 2],   # stop 2 at index 2: 3 delivered (stop included)
           [3, 3, 3, 3, 3],   # no stop: all 5
           [1, 9, 9, 9, 9]]   # stop 1 first: 1
    rows = np.concatenate([np.asarray(prompt), np.asarray(new)], axis=1)
    assert bench_continuous.delivered(rows, prompt_len=3, stop_ids=(1, 2)) == 3 + 5 + 1
    # A stop id inside the prompt part is not counted (only new tokens are read).
    assert bench_continuous.delivered(rows, prompt_len=3, stop_ids=(5,)) == 15
