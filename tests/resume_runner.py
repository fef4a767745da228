"""``pepo`` CLI in a subprocess, with one extra reward so that an untrained tiny model gets varied rewards.

Used by tests/test_resume.py: ``python tests/resume_runner.py train --reward_funcs varied ...``. The
reward is deterministic in the completion text (so a resumed run scores exactly as an uninterrupted
one) and all equal in about one group in three, so DAPO dynamic sampling drops groups and samples more.
"""

import sys
import zlib

import torch


def varied_reward(completions, **_):
    return [float(zlib.crc32(str(c).encode()) % 4 == 0) for c in completions]


if __name__ == "__main__":
    torch.set_num_threads(1)
    from pepo.cli import main
    from pepo.rewards import REWARDS

    REWARDS["varied"] = varied_reward
    sys.exit(main(sys.argv[1:]))
