"""Qwen2.5-Math-7B in the paper's protocol (lr 5e-5); `regime=` math | medical | figfont (default math).

    python -m deft_jax.compile --config configs/paper/qwen2_5_math_7b.py:regime=math --topology v5p-32
    python -m deft_jax.train --config configs/paper/qwen2_5_math_7b.py:regime=math,objective=nll,model_path=DIR \\
        --workdir runs/qwen2_5_math_7b_math_nll
Arguments: see configs/paper/common.py. Plans (mesh, micro-batch size) per topology come from compile reports.
"""
from configs.paper import common

PRESET = "qwen2.5-math-7b"
PLANS = {"math": {"v5p-32": common.Plan(fsdp=16, micro_batch_size=32)},
         "short": {"v5p-32": common.Plan(fsdp=16, micro_batch_size=128)}}


def get_config(arg=None):
    return common.paper_config(arg, preset=PRESET, lr=5e-5, default_regime="math", plans=PLANS,
                               default_topology="v5p-32")
