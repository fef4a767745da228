"""pepo's torchvision check imports torchvision: an installed one that cannot load gets a message with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    from pepo.models.loading import TorchvisionBroken, load_model_and_processor, load_processor, torchvision_available
    assert torchvision_available() is False
    for load in (load_processor, load_model_and_processor):
        try:
            load(sys.argv[1])
        except TorchvisionBroken as err:
            print("BROKEN:", err)
        else:
            print("LOADED")
""")


def test_a_torchvision_that_does_not_load_is_reported_with_the_fix(tmp_path, tiny_vlm):
    # A torchvision package whose import fails as PyPI's CUDA wheel does beside a CPU torch.
    pkg = tmp_path / "site" / "torchvision"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), src]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("BROKEN:") for line in lines), proc.stdout
    assert "operator torchvision::nms does not exist" in lines[0]
    assert "pip uninstall torchvision" in lines[0] and "download.pytorch.org/whl/cpu" in lines[0]


def test_absent_torchvision_is_simply_unavailable():
    from pepo.models.loading import torchvision_available, torchvision_error

    assert torchvision_error() is None
    assert torchvision_available() == (__import__("importlib").util.find_spec("torchvision") is not None)
