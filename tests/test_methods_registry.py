"""The method registry (pepo.methods): built-ins, user methods from a file / module / entry point, the README's
example trained through `pepo demo`, and VPPO's hooks against a float64 loop of the public code."""

from __future__ import annotations

import json
import math
import re
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from pepo.methods import LossContext, Method, builtin_methods, get_method, method_table, register
from tests.test_trainer import _loss_and_grads, _max_diff, _prepared_batch, make_config, make_trainer

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ["grpo", "dapo", "pepo", "pepo_g", "pepo_d", "perception_only", "exploration_only", "high_entropy",
           "papo_g", "papo_d", "vppo", "vgpo", "clip_cov"]


def readme_example() -> str:
    """The user-method example of the README (between its markers)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- user-method-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its user-method example"
    return block.group(1)


def test_builtin_registry_and_unknown_names():
    assert list(builtin_methods()) == BUILTIN
    with pytest.raises(ValueError, match=r"method='pepox' is not known.*'grpo'.*module:Class"):
        get_method("pepox")
    with pytest.raises(ValueError, match="built-in"):
        register(type("Clash", (Method,), {"name": "grpo"}))
    with pytest.raises(ValueError, match="not a pepo.methods.Method"):
        get_method("json:dumps")


def test_trainer_and_mixin_name_no_method():
    """The trainer loops over what the method declares: no method name appears in its code (the config's default
    method aside)."""
    for path, cls in (("src/pepo/trainer.py", "class PEPOTrainer"), ("src/pepo/perception_trainer.py",
                                                                     "class PerceptionMixin")):
        text = (ROOT / path).read_text()
        text = text[text.index(cls):]
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        code = re.sub(r'""".*?"""', "", code, flags=re.S)  # docstrings may name methods
        for name in BUILTIN:
            assert f'"{name}"' not in code and f"'{name}'" not in code, (path, name)


def test_method_table_and_help_come_from_the_registry(capsys):
    table = method_table()
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README's method table is stale: paste `python -m pepo.methods`"
    from pepo.cli import main

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"`{name}` {builtin_methods()[name].description}" in out for name in BUILTIN)


def test_user_method_from_file_module_and_entry_point(tmp_path, monkeypatch):
    path = tmp_path / "my_methods.py"
    path.write_text(readme_example())
    args = make_config(tmp_path, method=f"{path}:VisualTopHalf")
    assert (args.loss_type, args.token_weighting) == ("grpo", None)  # its preset
    assert make_config(tmp_path, method=f"{path}:VisualTopHalf", loss_type="bnpo").loss_type == "bnpo"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_method("my_methods:VisualTopHalf").name == "visual_top_half"
    monkeypatch.chdir(tmp_path)  # a module name that is not importable is looked up as <name>.py here
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    sys.modules.pop("my_methods", None)
    assert type(get_method("my_methods:VisualTopHalf")).__name__ == "VisualTopHalf"

    class EntryPoint:
        name = "top_half_ep"

        def load(self):
            return get_method(f"{path}:VisualTopHalf")

    import pepo.methods as registry

    monkeypatch.setattr(registry, "_entry_points", lambda: {"top_half_ep": EntryPoint()})
    assert get_method("top_half_ep").name == "visual_top_half"
    assert "top_half_ep" in registry.method_names()
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        get_method(f"{path}:Nope")


def test_readme_method_gradient_is_grpo_with_its_token_mask(tiny_vlm, tmp_path):
    """The README's method changes nothing but the token mask: its gradient equals GRPO's with A_i x mask_it,
    the mask written out here as a loop (tokens at or above their response's median visual similarity)."""
    path = tmp_path / "my_methods.py"
    path.write_text(readme_example())
    trainer = make_trainer(tiny_vlm, tmp_path, method=f"{path}:VisualTopHalf")
    inputs = _prepared_batch(trainer, progress=0.5)
    _, grads_method = _loss_and_grads(trainer, inputs)
    scores, mask = trainer.last_token_stats["scores"], trainer.last_token_stats["mask"]
    keep = torch.zeros(mask.shape)
    for b in range(mask.shape[0]):
        valid = sorted(scores[b, t].item() for t in range(mask.shape[1]) if mask[b, t])
        median = valid[(len(valid) - 1) // 2]  # torch's nanmedian: the lower middle value
        for t in range(mask.shape[1]):
            keep[b, t] = float(bool(mask[b, t]) and scores[b, t].item() >= median)
    assert 0 < keep.sum() < mask.sum()
    trainer.args.method = "grpo"
    _, grads_grpo = _loss_and_grads(trainer, {**inputs, "advantages": inputs["advantages"].unsqueeze(1) * keep})
    scale = max(g.abs().max().item() for g in grads_grpo)
    assert scale > 0 and _max_diff(grads_method, grads_grpo) <= 1e-6 * scale
    _, grads_plain = _loss_and_grads(trainer, inputs)
    assert _max_diff(grads_method, grads_plain) > 1e-4 * scale  # the mask matters


def test_readme_method_trains_in_the_demo(tmp_path, monkeypatch):
    from pepo.cli import main

    path = tmp_path / "my_methods.py"
    path.write_text(readme_example())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code = main(["demo", "--method", "my_methods.py:VisualTopHalf", "--num_train", "64", "--num_test", "8",
                 "--warm_start_steps", "2", "--warm_start_target", "0", "--warm_start_min_accuracy", "0",
                 "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "16",
                 "--output_dir", str(out)])
    assert code == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kept = [m["visual_top_half/kept_fraction"] for m in metrics if "visual_top_half/kept_fraction" in m]
    assert len(kept) == 2 and all(0.4 <= k < 1.0 for k in kept)
    assert "my_methods.py:VisualTopHalf" in (out / "config.yaml").read_text()


def test_study_accepts_every_registered_method(tmp_path, monkeypatch):
    from pepo.analysis import study

    seen = {}
    monkeypatch.setattr(study, "_run_all", lambda out, methods, *rest: seen.setdefault("methods", methods) and 0)
    assert study.main(["run", "--out", str(tmp_path), "--methods", "all", "--seeds", "0"]) == 0
    assert seen["methods"] == BUILTIN
    with pytest.raises(SystemExit):
        study.main(["run", "--out", str(tmp_path), "--methods", "grpo", "pepox"])


# --- VPPO's hooks against the public code, written out as a float64 loop ---------------------------------------


def test_vppo_hooks_equal_the_public_code_loop():
    """Unequal response lengths, two micro-batches of one update batch: min / max over the update batch, mean of
    s_hat over the micro-batch, entropy penalty coef * mean_mb(-logp) * tokens_mb / tokens_batch."""
    vppo = get_method("vppo")
    args = make_config(Path("/tmp"), method="vppo")
    gen = torch.Generator().manual_seed(0)
    n, c = 8, 7
    lengths = [7, 3, 5, 1, 6, 2, 7, 4]
    mask = torch.tensor([[t < l for t in range(c)] for l in lengths])
    logps = -torch.rand(n, c, generator=gen, dtype=torch.float64) * 3
    masked = logps - torch.randn(n, c, generator=gen, dtype=torch.float64)
    from pepo.methods import RolloutContext

    columns = vppo.rollout_columns(RolloutContext(args=args, mask=mask, advantages=torch.ones(n), logps=logps.float(),
                                                  masked_logps=masked.float()))
    deps = [[min(10.0, max(0.0, math.exp(min(20, max(-20, m - lp))) - min(20, max(-20, m - lp)) - 1))
             for lp, m in zip(a.tolist(), b.tolist())] for a, b in zip(logps, masked)]
    means = [sum(d[:l]) / l for d, l in zip(deps, lengths)]
    lo, hi = min(means), max(means)
    tokens = sum(lengths)
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
        idx = torch.tensor(rows)
        ctx = LossContext(args=args, training=True, progress=0.0, mask=mask[idx], advantages=torch.ones(4),
                          logps=logps[idx].float(), entropies=None, scores=None, no_image=torch.zeros(4, dtype=bool),
                          rollout={k: v[idx] for k, v in columns.items()}, accumulation=2.0,
                          token_normalizer=torch.tensor(float(tokens)))
        s_hat = [(means[r] - lo) / (hi - lo) for r in rows]
        mu = sum(s_hat) / len(s_hat)
        expected_scale = [0.9 + s * 0.1 / (mu + 1e-8) for s in s_hat]
        torch.testing.assert_close(vppo.advantage_scale(ctx).double(), torch.tensor(expected_scale, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        selected = vppo.token_mask(ctx)
        for i, r in enumerate(rows):
            k = math.ceil(Fraction("0.4") * lengths[r])
            top = sorted(range(lengths[r]), key=lambda t: (-deps[r][t], t))[:k]
            assert set(torch.nonzero(selected[i]).flatten().tolist()) == set(top)
        mb_tokens = sum(lengths[r] for r in rows)
        mean_neg_logp = sum(-logps[r, t].item() for r in rows for t in range(lengths[r])) / mb_tokens
        expected_entropy = 0.06 * mean_neg_logp * mb_tokens / tokens  # public: loss * tokens_mb * world / total
        assert vppo.extra_loss(ctx).item() == pytest.approx(expected_entropy, rel=1e-5)
        assert vppo.extra_loss(ctx).item() != pytest.approx(0.06 * mean_neg_logp / 2, rel=1e-3)  # ours before
