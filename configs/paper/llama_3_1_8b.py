"""Llama-3.1-8B in the paper's protocol (lr 2e-5); `regime=` math | medical | figfont (default figfont).

    python -m deft_jax.compile --config configs/paper/llama_3_1_8b.py:regime=figfont --topology v5p-32
    python -m deft_jax.train --config configs/paper/llama_3_1_8b.py:regime=figfont,objective=nll,model_path=DIR \\
        --workdir runs/llama_3_1_8b_figfont_nll
Arguments: see configs/paper/common.py. Plans (mesh, micro-batch size) per topology come from compile reports.
"""
from configs.paper import common

PRESET = "llama-3.1-8b"
PLANS = {"math": {"v5p-32": common.Plan(fsdp=16, micro_batch_size=32)},
         "short": {"v5p-32": common.Plan(fsdp=16, micro_batch_size=128)}}


def get_config(arg=None):
    return common.paper_config(arg, preset=PRESET, lr=2e-5, default_regime="figfont", plans=PLANS,
                               default_topology="v5p-32")
