"""deepseek-math-7b-base in the paper's protocol (lr 5e-5); `regime=` math | medical | figfont (default math).

    python -m deft_jax.compile --config configs/paper/deepseek_math_7b_base.py:regime=math --topology v5p-32
    python -m deft_jax.train --config configs/paper/deepseek_math_7b_base.py:regime=math,objective=nll,model_path=DIR \\
        --workdir runs/deepseek_math_7b_base_math_nll
Arguments: see configs/paper/common.py. Plans (mesh, micro-batch size) per topology come from compile reports.
"""
from configs.paper import common

PRESET = "deepseek-math-7b-base"
PLANS = {"math": {"v5p-32": common.Plan(fsdp=16, micro_batch_size=32)},
         "short": {"v5p-32": common.Plan(fsdp=16, micro_batch_size=128)}}


def get_config(arg=None):
    return common.paper_config(arg, preset=PRESET, lr=5e-5, default_regime="math", plans=PLANS,
                               default_topology="v5p-32")
