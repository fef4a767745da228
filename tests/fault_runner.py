"""``pepo`` CLI in a subprocess with the fault points of :mod:`pepo.faults` and a few more inside the libraries.

``PEPO_FAULT=<point>:<count>[:kind] python tests/fault_runner.py train ...`` (tests/test_faults.py). Besides the
points in pepo's own code (``pepo.faults.POINTS``), this runner wraps, only in this test process:

* ``generation``: TRL's ``GRPOTrainer._generate`` (training generations; after the completions are sampled,
  before they are scored), so the kill lands inside a step's generation;
* ``backward``: accelerate's ``Accelerator.backward``, after the gradients are accumulated, before the
  optimizer step;
* ``checkpoint_model``: transformers' ``Trainer._save_optimizer_and_scheduler``, entered once the model's files
  of a checkpoint are written and before ``optimizer.pt``;
* ``checkpoint_rng``: ``Trainer._save_rng_state`` (optimizer and scheduler written, RNG state and
  ``trainer_state.json`` not yet).

It also registers the ``varied`` reward of tests/resume_runner.py.
"""

import sys

import torch


def _wrap(owner, name, point, before=True):
    from pepo.faults import fault_point

    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if before:
            fault_point(point)
        result = original(*args, **kwargs)
        if not before:
            fault_point(point)
        return result

    setattr(owner, name, wrapped)


if __name__ == "__main__":
    torch.set_num_threads(1)
    import accelerate
    from transformers import Trainer
    from trl import GRPOTrainer

    from pepo.cli import main
    from pepo.rewards import REWARDS
    from tests.resume_runner import varied_reward

    _wrap(GRPOTrainer, "_generate", "generation", before=False)
    _wrap(accelerate.Accelerator, "backward", "backward", before=False)
    _wrap(Trainer, "_save_optimizer_and_scheduler", "checkpoint_model")
    _wrap(Trainer, "_save_rng_state", "checkpoint_rng")
    REWARDS["varied"] = varied_reward
    sys.exit(main(sys.argv[1:]))
