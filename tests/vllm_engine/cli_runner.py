"""``pepo`` CLI in a subprocess on vLLM-CPU, with this folder's CPU workarounds and the fault points of
tests/fault_runner.py (``PEPO_FAULT=generation:3 python tests/vllm_engine/cli_runner.py demo ...``).

The workarounds (in-process engine, 1 GiB KV cache, live-weight linear layers) come from importing
tests/vllm_engine/conftest.py, exactly as the in-process tests get them; nothing here is pepo runtime code.
"""

import sys

if __name__ == "__main__":
    import tests.vllm_engine.conftest  # noqa: F401  (env + F.linear on the live weight, before vLLM loads a model)
    import torch

    torch.set_num_threads(1)
    import accelerate
    from trl import GRPOTrainer

    from pepo.cli import main
    from pepo.rewards import REWARDS
    from tests.fault_runner import _wrap
    from tests.resume_runner import varied_reward

    _wrap(GRPOTrainer, "_generate", "generation", before=False)
    _wrap(accelerate.Accelerator, "backward", "backward", before=False)
    REWARDS["varied"] = varied_reward
    sys.exit(main(sys.argv[1:]))
