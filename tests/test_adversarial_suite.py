"""The adversarial response suite (tests/adversarial.py) on the real items of ../shared/realdata/: every response
kind gets pepo's verdict equal to its label and the release's verdict equal to what the release's rules give.

The default run takes a seeded sample per benchmark (math verification forks a child per item: all 601 Geometry3K
items take minutes); ``-m slow`` (or ``python -m tests.adversarial``) scores every item. The training rewards are
checked on the same kinds.
"""

from __future__ import annotations

import pytest

from tests.adversarial import BENCHMARKS, KINDS, REALDATA, SPECS, expected_release, responses, score_benchmark

pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real benchmark files not present at {REALDATA}")

# items per benchmark in the default suite (LogicVista is cheap: all of it)
SAMPLE = {"geometry3k": 80, "logicvista": None, "mathvista": 300, "mathverse": 80}


def _check(result) -> None:
    assert result.items > 0
    assert result.pepo_wrong == [], result.pepo_wrong[:5]
    assert result.release_unexpected == [], result.release_unexpected[:5]


@pytest.mark.parametrize("bench", BENCHMARKS)
def test_every_kind_judged_as_labelled_and_as_the_release_rules_say(bench):
    result = score_benchmark(bench, sample=SAMPLE[bench])
    _check(result)
    # the holes of the release the suite is built to show, counted per kind (labels are 0 for all of these)
    if bench == "logicvista":
        for kind in ("closed thinking only, gold in it", "untagged sentence", "wrong or gold", "bare gold after </think>"):
            n, pepo_right, release_right, _ = result.per_kind[kind]
            assert pepo_right == n and release_right == 0
    if bench == "mathvista":
        n, pepo_right, release_right, _ = result.per_kind["integer + .5"]
        assert n > 0 and pepo_right == n and release_right == 0


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_every_item_every_kind(bench):
    _check(score_benchmark(bench))


def test_kinds_cover_the_issue_classes():
    names = {k.name for k in KINDS}
    assert {"cut off in the thinking, gold mentioned", "cut off after <answer>", "gold or wrong", "digits apart (1 2)",
            "lowercase letter", "option text", "gold with answer phrase", "bare gold after </think>"} <= names
    assert len(KINDS) >= 30


def test_training_rewards_on_the_same_kinds():
    """accuracy (Geometry3K) and choice (LogicVista) rewards give each kind its label; the release's QA_Accuracy
    gives 0 to every response without a closed span, as the contract does."""
    from pepo.eval.protocols.release import release_reward
    from pepo.rewards import REWARDS
    from tests.realdata import patient_verifier

    specs = list(SPECS["geometry3k"]())[:12]
    with patient_verifier():
        for spec in specs:
            pairs = responses(spec)
            texts = [t for _, t in pairs]
            got = REWARDS["accuracy"](texts, answer=[spec.gold] * len(texts), timeout_seconds=60.0)
            assert got == [float(k.label) for k, _ in pairs], spec.id
            theirs = release_reward(texts, [spec.gold] * len(texts))
            for (kind, text), score in zip(pairs, theirs):
                if "</answer>" not in text:
                    assert score == 0.0, (kind.name, text)
    for spec in list(SPECS["logicvista"]())[:40]:
        pairs = responses(spec)
        got = REWARDS["choice"]([t for _, t in pairs], answer=[spec.gold] * len(pairs))
        assert got == [float(k.label) for k, _ in pairs], spec.id


def test_release_expectations_are_rules_not_observations():
    """Spot checks of expect_release against the rules written out by hand for one LogicVista item (gold B)."""
    spec = next(s for s in SPECS["logicvista"]() if s.gold == "B")
    by_name = {k.name: k for k in KINDS}
    assert expected_release(by_name["empty span"], "logicvista", spec) == 0.0  # reads "A" from "</answer>"
    assert expected_release(by_name["wrong or gold"], "logicvista", spec) == 1.0  # the last standalone letter
    assert expected_release(by_name["gold with answer phrase"], "geometry3k", spec) == 0.0
