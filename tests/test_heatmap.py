"""Token heatmaps (pepo.analysis.heatmap): colour scale, HTML pages + index, streaming, PNG, and the pages
rendered by a real headless Chromium (colours set by the page's JS must equal token_colors)."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import shutil
import subprocess
import weakref
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from pepo.analysis.heatmap import MISSING_COLOR, MODES, HeatmapRow, HeatmapWriter, render_heatmap_png, token_colors

TOKENS = ["Hello", " <b>", " &", " world", "\n", "  two  spaces", " \"q\"", " 42"]
SIMILARITY = [0.1, 0.5, -0.2, 0.3, 0.0, 0.25, 0.45, -0.05]
ENTROPY = [0.5, 2.0, 1.0, 0.1, 0.3, 1.5, 0.05, 0.8]
WEIGHT = [1.0, 1.5, 0.5, 1.25, 0.75, 1.0, 1.125, 0.875]  # mean 1
SHIFT = [0.01, 0.2, 0.05, 0.0, 0.3, 0.1, 0.15, 0.02]


class Record(dict):
    """A dict that can be weak-referenced, to prove the writer drops records."""


class TokenList(list):
    pass


def make_record(id: str = "geo/7 a", sample: int = 0, reward: float = 1.0, **over) -> dict:
    record = Record(id=id, sample=sample, question="How many <shapes> & lines?\nCount them.", answer="3 & 4",
                    image="images/p.png", response="".join(TOKENS), tokens=list(TOKENS), similarity=list(SIMILARITY),
                    entropy=list(ENTROPY), weight=list(WEIGHT), shift=list(SHIFT), reward=reward,
                    correct=reward >= 0.5)
    record.update(over)
    return record


def make_image(size: tuple[int, int] = (300, 200)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).rectangle([size[0] // 10, size[1] // 10, size[0] // 2, size[1] // 2], fill=(200, 30, 30))
    return img


class Spans(HTMLParser):
    """Collects the token spans: their attributes and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: list[dict] = []
        self._in = False
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        if tag == "span" and "tok" in (attrs.get("class") or "").split():
            self.spans.append({"attrs": attrs, "text": ""})
            self._in = True
        elif self._in:  # a tag inside a token span: its text was not escaped
            raise AssertionError(f"unexpected <{tag}> inside a token span")

    def handle_endtag(self, tag):
        if tag == "span":
            self._in = False

    def handle_data(self, data):
        if self._in:
            self.spans[-1]["text"] += data


def parse_spans(html: str) -> Spans:
    parser = Spans()
    parser.feed(html)
    return parser


# ---------------------------------------------------------------- colour scale


def test_token_colors_scale_ends_and_neutral():
    assert token_colors([0.0, 0.5, 1.0], "similarity") == ["#f7fbff", "#9ecae1", "#3d8dc4"]
    assert token_colors([3.0, 0.0, 1.5], "entropy") == ["#f16913", "#fff5eb", "#fdae6b"]
    # diverging around 1: min -> purple, 1 -> white, max -> green; 0.75 is halfway to purple, and 183.5 rounds
    # half-up to 184 (= 0xb8) as JS's Math.round would, not half-to-even
    assert token_colors([0.5, 0.75, 1.0, 1.5], "weight") == ["#9970ab", "#ccb8d5", "#ffffff", "#5aae61"]
    # the scale is symmetric around 1: the furthest weight gets the full colour, the other side less
    assert token_colors([0.8, 1.0, 2.0], "weight")[1:] == ["#ffffff", "#5aae61"]
    assert token_colors([0.8, 1.0, 2.0], "weight")[0] not in ("#9970ab", "#ffffff")


def test_token_colors_constant_missing_and_bad_mode():
    assert token_colors([0.3] * 4, "similarity") == ["#f7fbff"] * 4  # no division by zero
    assert token_colors([2.0, 2.0], "entropy") == ["#fff5eb"] * 2
    assert token_colors([1.0] * 3, "weight") == ["#ffffff"] * 3
    assert token_colors([], "weight") == []
    assert token_colors([None, float("nan"), 0.0, 1.0], "similarity") == [MISSING_COLOR, MISSING_COLOR,
                                                                          "#f7fbff", "#3d8dc4"]
    with pytest.raises(ValueError, match="similarity, entropy, weight"):
        token_colors([1.0], "shift")


# ---------------------------------------------------------------- HTML pages + index


def test_pages_and_index(tmp_path):
    (tmp_path / "images").mkdir()
    make_image().save(tmp_path / "images" / "p.png")
    meta = {"model": "tiny-qwen", "task": "geometry"}
    with HeatmapWriter(tmp_path, meta, image_max_side=64) as writer:
        first = writer.add(make_record())  # image read from tmp_path / record["image"]
        second = writer.add(make_record(id="geo/8", sample=3, reward=0.0, shift=None), make_image((40, 90)))
    assert first.name == "0000_geo_7_a_0.html" and second.name == "0001_geo_8_3.html"

    html = first.read_text(encoding="utf-8")
    assert "tiny-qwen" in html and "geometry" in html
    assert "&lt;b&gt;" in html and " &amp;</span>" in html and "How many &lt;shapes&gt; &amp; lines?" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    spans = parse_spans(html).spans
    assert [s["text"] for s in spans] == TOKENS  # every token, unescaped back to its text, whitespace intact
    for i, span in enumerate(spans):
        attrs = span["attrs"]
        assert int(attrs["data-i"]) == i
        assert float(attrs["data-similarity"]) == SIMILARITY[i]
        assert float(attrs["data-entropy"]) == ENTROPY[i]
        assert float(attrs["data-weight"]) == WEIGHT[i]
        assert float(attrs["data-shift"]) == SHIFT[i]
        assert f"similarity {SIMILARITY[i]:.3f}" in attrs["title"] and f"weight {WEIGHT[i]:.3f}" in attrs["title"]
        assert f"entropy {ENTROPY[i]:.3f} nats" in attrs["title"] and f"shift {SHIFT[i]:.3f}" in attrs["title"]
    assert 'id="mode-similarity"' in html and 'id="mode-entropy"' in html and 'id="mode-weight"' in html
    assert "function setMode(name)" in html and "nats" in html and "white-space: pre-wrap" in html

    uri = re.search(r'src="data:image/png;base64,([^"]+)"', html)
    assert uri, "image not embedded as a data URI"
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.group(1))))
    assert thumb.size == (64, 43)  # 300 x 200 downscaled to image_max_side

    html2 = second.read_text(encoding="utf-8")
    assert "incorrect" in html2 and "data-shift" not in html2
    assert "shift " not in parse_spans(html2).spans[0]["attrs"]["title"]

    index = (tmp_path / "heatmaps" / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'<a href="([^"]+)"', index) == [first.name, second.name]
    assert "1.000" in index and "0.000" in index and "tiny-qwen" in index


def test_missing_meta_and_image_are_tolerated(tmp_path):
    with HeatmapWriter(tmp_path, {}) as writer:
        page = writer.add(make_record(image="images/nowhere.png"))
    html = page.read_text(encoding="utf-8")
    assert "unknown model / task" in html and "image not available" in html
    assert len(parse_spans(html).spans) == len(TOKENS)


def test_writer_streams_summary_rows_only(tmp_path):
    writer = HeatmapWriter(tmp_path, {"model": "m"})
    image = make_image((16, 16))
    record = make_record(tokens=TokenList(TOKENS))
    record_ref, tokens_ref = weakref.ref(record), weakref.ref(record["tokens"])
    writer.add(record, image)
    del record
    assert record_ref() is None and tokens_ref() is None, "the writer kept a reference to the record"
    for k in range(1, 200):
        writer.add(make_record(id=f"p{k}", reward=k % 2), image)
    index = writer.close()
    assert len(writer.rows) == 200
    scalar = (str, int, float, bool, type(None))
    for row in writer.rows:
        assert isinstance(row, HeatmapRow)
        assert all(isinstance(getattr(row, f.name), scalar) for f in dataclasses.fields(row))
    assert writer.rows[1].n_tokens == len(TOKENS) and writer.rows[1].max_weight == 1.5
    assert len(list((tmp_path / "heatmaps").glob("0*.html"))) == 200
    assert index.read_text().count("<tr>") == 201  # header + one per page
    with pytest.raises(RuntimeError):
        writer.add(make_record(), image)


def test_malformed_record_names_the_field(tmp_path):
    with HeatmapWriter(tmp_path, {}) as writer:
        with pytest.raises(ValueError, match="'weight'"):
            writer.add(make_record(weight=WEIGHT[:-1]), make_image())
        assert writer.rows == []
    assert list((tmp_path / "heatmaps").glob("0*.html")) == []
    with pytest.raises(ValueError, match="'similarity'"):
        render_heatmap_png(make_record(similarity=SIMILARITY[:3]), tmp_path / "x.png")


# ---------------------------------------------------------------- PNG


def _count_near(img: Image.Image, hex_color: str, tol: int = 1) -> int:
    target = tuple(int(hex_color[k:k + 2], 16) for k in (1, 3, 5))
    return sum(n for n, px in img.getcolors(1 << 20) if all(abs(a - b) <= tol for a, b in zip(px, target)))


def test_png_heatmap(tmp_path):
    # long tokens so each token box is far bigger than the colour bar's end
    tokens = ["measuring", " triangle", " together", " diagonal"] * 3
    weights = [0.5, 1.0, 1.5, 1.0] * 3
    record = make_record(tokens=tokens, response="".join(tokens), similarity=[0.1] * 12, entropy=[0.2] * 12,
                         weight=weights, shift=None)
    path = render_heatmap_png(record, tmp_path / "sub" / "h.png", mode="weight", image=make_image(),
                              meta={"model": "tiny-qwen", "task": "geometry"})
    img = Image.open(path).convert("RGB")
    assert 800 <= img.width <= 2500 and 300 <= img.height <= 3000
    assert len(img.getcolors(1 << 20)) > 20  # not blank
    low, high = token_colors(weights, "weight")[0], token_colors(weights, "weight")[2]
    assert _count_near(img, low) > 1000 and _count_near(img, high) > 1000

    # long responses are capped: 1,000 tokens draw no more rows than 400 (plus the "... more" note)
    def long(n: int) -> dict:
        toks = [f" w{i % 97}" for i in range(n)]
        vals = [(i % 7) / 7 for i in range(n)]
        return make_record(tokens=toks, response="".join(toks), similarity=vals, entropy=vals, weight=vals,
                           shift=None)

    h400 = Image.open(render_heatmap_png(long(400), tmp_path / "a.png", mode="similarity")).height
    h1000 = Image.open(render_heatmap_png(long(1000), tmp_path / "b.png", mode="similarity")).height
    assert 0 < h1000 - h400 < 100


# ---------------------------------------------------------------- headless browser


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium not installed: apt-get install chromium")


def _run_chromium(chromium: str, profile: Path, url: str, *extra: str) -> str:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}", *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]  # a dbus error line on stderr is normal
    return done.stdout


def _dom_colors(dom: str) -> tuple[list[str], list[str], dict]:
    parsed = parse_spans(dom)
    colors = []
    for span in parsed.spans:
        m = re.search(r"background-color:\s*rgb\((\d+),\s*(\d+),\s*(\d+)\)", span["attrs"].get("style", ""))
        assert m, f"token {span['text']!r} not coloured: {span['attrs'].get('style')!r}"
        colors.append("#" + "".join(f"{int(c):02x}" for c in m.groups()))
    return [s["text"] for s in parsed.spans], colors, parsed.body


def test_browser_colours_match_python(tmp_path, chromium):
    with HeatmapWriter(tmp_path, {"model": "tiny-qwen", "task": "geometry"}) as writer:
        page = writer.add(make_record(), make_image())
    url = page.resolve().as_uri()
    profile = tmp_path / "profile"
    seen = {}
    for mode in MODES:
        texts, colors, body = _dom_colors(_run_chromium(chromium, profile, f"{url}#{mode}", "--dump-dom"))
        assert texts == TOKENS
        assert colors == token_colors(make_record()[mode], mode), mode
        assert body.get("data-mode") == mode
        seen[mode] = colors
    assert seen["weight"] != seen["entropy"] != seen["similarity"]  # switching the mode recolours
    texts, colors, body = _dom_colors(_run_chromium(chromium, profile, url, "--dump-dom"))
    assert colors == seen["similarity"] and body.get("data-mode") == "similarity"  # default without a hash

    shot = tmp_path / "shot.png"
    _run_chromium(chromium, profile, f"{url}#weight", f"--screenshot={shot}", "--window-size=1000,800")
    img = Image.open(shot).convert("RGB")
    assert img.size == (1000, 800) and len(img.getcolors(1 << 20)) > 20
    assert _count_near(img, "#5aae61", tol=2) > 50  # the up-weighted token's green is on screen
