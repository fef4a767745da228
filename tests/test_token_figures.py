"""Figure 2 (similarity of correct vs incorrect responses) and Figure 3 (perception/exploration words):
statistics against hand-computed numbers and scipy, files written, word clouds valid and deterministic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from pepo.analysis.distributions import (
    SimilarityDistributions,
    auc,
    kolmogorov_sf,
    ks_two_sample,
    response_summary,
)
from pepo.analysis.words import WordStats, layout_cloud, normalize_word, render_cloud

META = {"model": "tiny-vl", "task": "shapes"}


def _record(tokens, similarity, entropy=None, weight=None, correct=True, rid="0", sample=0):
    n = len(tokens)
    return {
        "id": rid, "sample": sample, "question": "q", "answer": "a", "image": "img.png",
        "response": "".join(tokens), "tokens": list(tokens), "similarity": list(similarity),
        "entropy": list(entropy if entropy is not None else [1.0] * n),
        "weight": list(weight if weight is not None else [1.0] * n),
        "shift": None, "reward": 1.0 if correct else 0.0, "correct": correct,
    }


def _valid_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------ distributions


def test_response_summary_literal():
    s = response_summary([0.1, 0.5, 0.3, 0.9], k=2)
    assert s["global_mean"] == pytest.approx(0.45)
    assert s["top_k_mean"] == pytest.approx(0.7)
    assert s["bottom_k_mean"] == pytest.approx(0.2)
    # k larger than the response: all tokens
    s = response_summary([0.1, 0.5, 0.3, 0.9], k=10)
    assert s == pytest.approx({"global_mean": 0.45, "top_k_mean": 0.45, "bottom_k_mean": 0.45})
    with pytest.raises(ValueError):
        response_summary([], k=2)
    with pytest.raises(ValueError):
        response_summary([0.1], k=0)


def test_ks_and_auc_hand_computed_with_ties():
    a, b = [1, 2, 2, 3], [2, 3, 3, 4]
    # ECDF gaps at 1, 2, 3, 4: |1/4-0|, |3/4-1/4|, |1-3/4|, 0
    d, p = ks_two_sample(a, b)
    assert d == pytest.approx(0.5)
    lam = (math.sqrt(2) + 0.12 + 0.11 / math.sqrt(2)) * 0.5  # effective n = 16/8 = 2
    assert p == pytest.approx(kolmogorov_sf(lam))
    assert 0.0 < p < 1.0
    # of the 16 pairs: a > b once (3 > 2), ties 4 times (2=2 twice, 3=3 twice)
    assert auc(a, b) == pytest.approx((1 + 0.5 * 4) / 16)
    assert auc(b, a) == pytest.approx(1 - 3 / 16)
    # separated samples, identical samples
    assert ks_two_sample([1, 2, 3], [4, 5])[0] == 1.0
    assert auc([1, 2, 3], [4, 5]) == 0.0 and auc([4, 5], [1, 2, 3]) == 1.0
    assert ks_two_sample([1, 1, 2], [1, 1, 2]) == (0.0, 1.0)
    assert auc([1, 1, 2], [2, 1, 1]) == 0.5
    with pytest.raises(ValueError):
        ks_two_sample([], [1.0])
    with pytest.raises(ValueError):
        auc([1.0], [])


def test_kolmogorov_sf_known_values():
    assert kolmogorov_sf(0.0) == 1.0
    assert kolmogorov_sf(1.0) == pytest.approx(0.2699996716735, abs=1e-10)  # tabulated Q(1)
    assert kolmogorov_sf(5.0) < 1e-20


def test_ks_and_auc_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for na, nb, shift, decimals in [(30, 45, 0.3, None), (200, 150, 0.1, 1), (17, 5, -0.5, 0), (60, 60, 0.0, 2)]:
        a, b = rng.normal(shift, 1, na), rng.normal(0, 1, nb)
        if decimals is not None:  # rounding makes many ties, within and across samples
            a, b = np.round(a, decimals), np.round(b, decimals)
        d, p = ks_two_sample(a, b)
        assert d == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
        en = math.sqrt(na * nb / (na + nb))
        assert p == pytest.approx(stats.kstwobign.sf((en + 0.12 + 0.11 / en) * d), rel=1e-9, abs=1e-14)
        u = stats.mannwhitneyu(a, b, alternative="two-sided").statistic  # U of the first sample
        assert auc(a, b) == pytest.approx(u / (na * nb), abs=1e-12)
    for lam in [0.05, 0.3, 0.7, 1.0, 1.17, 1.19, 1.5, 2.5]:  # both branches of the series
        assert kolmogorov_sf(lam) == pytest.approx(stats.kstwobign.sf(lam), rel=1e-9, abs=1e-15)


def test_similarity_distributions_files_and_means(tmp_path):
    acc = SimilarityDistributions(k=2, max_fraction=1.0)
    # correct: global 0.7 / 0.6, top-2 0.7 / 0.7, bottom-2 0.7 / 0.5
    acc.add(_record(["a", "b"], [0.6, 0.8], correct=True, rid="0"))
    acc.add(_record(["a", "b", "c"], [0.4, 0.6, 0.8], correct=True, rid="1"))
    # incorrect: global 0.2 / 0.3, top-2 0.2 / 0.35, bottom-2 0.2 / 0.2
    acc.add(_record(["a", "b"], [0.1, 0.3], correct=False, rid="2"))
    acc.add(_record(["a", "b", "c"], [0.2, 0.2, 0.5], correct=False, rid="3"))
    acc.add(_record([], [], correct=False, rid="4"))  # an empty response is counted, not summarised
    payload = acc.write(tmp_path, META)

    saved = json.loads((tmp_path / "similarity_distributions.json").read_text())
    assert saved == json.loads(json.dumps(payload))
    assert saved["k"] == 2 and saved["n_empty"] == 1 and len(saved["responses"]) == 4
    expected = {"global_mean": (0.65, 0.25), "top_k_mean": (0.7, 0.275), "bottom_k_mean": (0.6, 0.2)}
    for key, (mean_c, mean_i) in expected.items():
        s = saved["statistics"][key]
        assert (s["n_correct"], s["n_incorrect"]) == (2, 2)
        assert s["mean_correct"] == pytest.approx(mean_c)
        assert s["mean_incorrect"] == pytest.approx(mean_i)
        assert s["auc"] == 1.0 and s["ks_D"] == 1.0 and 0 < s["ks_p"] < 1
    assert saved["statistics"]["global_mean"]["std_correct"] == pytest.approx(0.05)
    assert saved["statistics"]["top_k_mean"]["std_correct"] == pytest.approx(0.0)
    assert saved["responses"][1]["bottom_k_mean"] == pytest.approx(0.5)
    pixels = _valid_png(tmp_path / "similarity_distributions.png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600


def test_top_k_is_capped_on_short_responses_so_it_differs_from_the_mean(tmp_path):
    acc = SimilarityDistributions(k=10)  # at most 25% of a response
    sims = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # 8 tokens -> K = 2
    acc.add(_record(["t"] * 8, sims, correct=True))
    summary = acc.summaries[0]
    assert acc.effective_k(8) == 2 and acc.effective_k(3) == 1 and acc.effective_k(400) == 10
    assert summary["top_k_mean"] == pytest.approx(0.75) and summary["bottom_k_mean"] == pytest.approx(0.15)
    assert summary["global_mean"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="max_fraction"):
        SimilarityDistributions(max_fraction=0)


def test_similarity_distributions_auc_above_half_on_noisy_data(tmp_path):
    rng = np.random.default_rng(1)
    acc = SimilarityDistributions(k=3)
    for i in range(40):
        correct = i % 2 == 0
        sims = rng.normal(0.35 if correct else 0.25, 0.08, size=12)
        acc.add(_record(["t"] * 12, sims, correct=correct, rid=str(i)))
    stats = acc.write(tmp_path, META)["statistics"]
    assert stats["global_mean"]["auc"] > 0.5
    assert stats["global_mean"]["mean_correct"] > stats["global_mean"]["mean_incorrect"]


def test_similarity_distributions_one_group_empty(tmp_path):
    acc = SimilarityDistributions(k=2, max_fraction=1.0)
    acc.add(_record(["a", "b"], [0.6, 0.8], correct=True))
    acc.write(tmp_path, META)
    saved = json.loads((tmp_path / "similarity_distributions.json").read_text())
    for s in saved["statistics"].values():
        assert s["n_incorrect"] == 0 and s["mean_incorrect"] is None and s["std_incorrect"] is None
        assert s["ks_D"] is None and s["ks_p"] is None and s["auc"] is None
        assert s["mean_correct"] == pytest.approx(0.7)
    assert "no incorrect" in saved["note"]
    _valid_png(tmp_path / "similarity_distributions.png")
    # nothing at all: still files, no crash
    SimilarityDistributions().write(tmp_path / "none", {})
    _valid_png(tmp_path / "none" / "similarity_distributions.png")


# ------------------------------------------------------------------ words


@pytest.mark.parametrize("token, word", [
    (" Red", "red"), ("\u0120red", "red"), ("\u2581Wait", "wait"), ("wait,", "wait"), (" 12", "12"),
    (" 3.5", "3.5"), ("(3", "3"), ("\u0120Blue\u010a", "blue"),
    (",", None), ("\n", None), ("  ", None), ("", None), ("\u010a", None), ("**", None), ("\ufffd", None),
    ("<answer>", None), ("</think>", None), ("\u0120<answer>", None), ("<|im_end|>", None), ("<3", "3"),
])
def test_normalize_word(token, word):
    assert normalize_word(token) == word


def _word_records():
    return [
        _record(["The", " red", " ball", ",", " wait"], [0.1, 0.9, 0.5, 0.0, 0.2],
                [0.5, 0.3, 0.4, 0.1, 2.0], [0.8, 1.6, 1.0, 0.6, 1.0]),
        _record([" red", " wait", " the", " ball", "\n"], [0.7, 0.0, 0.1, 0.5, 0.3],
                [0.1, 3.0, 0.5, 0.6, 0.2], [1.2, 1.4, 0.9, 0.5, 1.0]),
        # "rare" has the highest similarity and entropy but occurs once: filtered by min_count
        _record(["Red", "Wait", " the", " rare"], [0.8, 0.1, 0.2, 0.95], [0.2, 2.5, 0.8, 5.0], [1.5, 1.1, 0.7, 0.7]),
    ]


def _word_stats(min_count=3):
    stats = WordStats(min_count=min_count)
    for r in _word_records():
        stats.add(r)
    return stats


def test_word_stats_tables():
    stats = _word_stats()
    sim = stats.table("similarity")
    assert [r["word"] for r in sim] == ["red", "the", "wait"]
    red = sim[0]
    assert red["rank"] == 1 and red["count"] == 3
    assert red["mean_similarity"] == pytest.approx(0.8)
    assert red["mean_entropy"] == pytest.approx(0.2)
    assert red["mean_weight"] == pytest.approx(4.3 / 3)
    ent = stats.table("entropy")
    assert [r["word"] for r in ent] == ["wait", "the", "red"]
    assert ent[0]["mean_entropy"] == pytest.approx(2.5) and ent[0]["mean_similarity"] == pytest.approx(0.1)
    assert [r["rank"] for r in ent] == [1, 2, 3]
    assert stats.table("entropy", top=1) == ent[:1]
    # min_count 1 lets "rare" (and "ball") in; "rare" then tops both tables
    loose = _word_stats(min_count=1)
    assert loose.table("similarity")[0]["word"] == "rare" and loose.table("entropy")[0]["word"] == "rare"
    assert {r["word"] for r in loose.table("weight")} == {"red", "the", "wait", "ball", "rare"}
    assert stats.n_tokens == 14 and stats.n_word_tokens == 12


def test_bad_by_names_valid_options():
    with pytest.raises(ValueError, match="'similarity'.*'entropy'.*'weight'.*'shift'"):
        _word_stats().table("shift")


def test_word_stats_write(tmp_path):
    payload = _word_stats().write(tmp_path, META, top=30)
    saved = json.loads((tmp_path / "words.json").read_text())
    assert saved == json.loads(json.dumps(payload))
    assert saved["similarity"][0]["word"] == "red" and saved["entropy"][0]["word"] == "wait"
    md = (tmp_path / "words.md").read_text()
    assert "Perception words (highest mean visual similarity)" in md
    assert "Exploration words (highest mean entropy)" in md
    assert md.count("| rank | word | count |") == 2 and "(nats)" in md and "(cosine)" in md
    assert "| 1 | red | 3 | 0.8000 |" in md
    for name in ("wordcloud_similarity.png", "wordcloud_entropy.png"):
        pixels = _valid_png(tmp_path / name)
        cloud = pixels[80:]  # below the title band
        assert (cloud.min(axis=2) < 200).mean() > 0.002  # words were drawn: not a blank canvas
    # same inputs, same bytes
    _word_stats().write(tmp_path / "again", META, top=30)
    for name in ("wordcloud_similarity.png", "wordcloud_entropy.png", "words.md", "words.json"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_word_stats_write_with_no_qualifying_word(tmp_path):
    _word_stats(min_count=10).write(tmp_path, META)
    md = (tmp_path / "words.md").read_text()
    assert md.count("No word occurs at least 10 times") == 2
    assert json.loads((tmp_path / "words.json").read_text())["similarity"] == []
    pixels = _valid_png(tmp_path / "wordcloud_entropy.png")
    assert (pixels[80:].min(axis=2) < 200).any()  # the "no word" message is drawn


def _disjoint(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


@pytest.mark.parametrize("n, width, height", [(60, 800, 500), (120, 300, 200)])
def test_layout_cloud_boxes_do_not_overlap(n, width, height):
    words = [(f"word{i}" * (1 + i % 3), max(10, 44 - i // 2)) for i in range(n)]
    placed = layout_cloud(words, width, height)
    assert placed and placed[0].word == "word0"
    assert len(placed) <= n
    if width == 800:
        assert len(placed) == n  # a roomy canvas fits them all
    for i, p in enumerate(placed):
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        for q in placed[i + 1:]:
            assert _disjoint(p.box, q.box), (p, q)
    assert layout_cloud(words, width, height) == placed  # deterministic
    # the first (largest) word sits at the centre
    x0, y0, x1, y1 = placed[0].box
    assert abs((x0 + x1) / 2 - width / 2) <= 2 and abs((y0 + y1) / 2 - height / 2) <= 2


def test_render_cloud_deterministic_and_few_words(tmp_path):
    words = [("red", 0.9), ("3", 0.7), ("circle", 0.5)]
    placed = render_cloud(words, tmp_path / "a.png", title="t", subtitle="size: similarity")
    render_cloud(words, tmp_path / "b.png", title="t", subtitle="size: similarity")
    assert [p.word for p in placed] == ["red", "3", "circle"]
    assert placed[0].size > placed[1].size > placed[2].size
    a, b = _valid_png(tmp_path / "a.png"), _valid_png(tmp_path / "b.png")
    assert np.array_equal(a, b)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 10  # anti-aliased coloured text, not blank
