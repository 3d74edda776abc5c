"""The sample corpus (`cliplab.data.corpus`): a small real build (`limit`) from the installed art, plus
unit checks of the caption and title helpers that need no sources."""

from __future__ import annotations

import json
import re
import time

import pytest
from PIL import Image, ImageDraw

from cliplab.data.corpus import build_sample_corpus, emoji, openclipart, read_corpus_split, sources
from cliplab.data.corpus.openclipart import COLLECTION_TITLES, STAR_GRADIENT_PATTERN_PATHS, STAR_GRADIENT_PATTERN_TITLES

LIMIT = 25
IMAGE_SIZE = 64
EXPECTED_LICENCES = {
    "twemoji": "CC-BY-4.0",
    "openmoji": "CC-BY-SA-4.0",
    "fluent-emoji-flat": "MIT",
    "noto": "Apache-2.0",
    "fxemoji": "Apache-2.0",
    "emojione-v1": "CC-BY-SA-4.0",
    "noto-v1": "Apache-2.0",
    "noto-font": "OFL-1.1",
    "openclipart": "CC-PDDC",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    try:
        sources.find_sources()
    except sources.CorpusSourcesError as error:
        pytest.skip(f"corpus sources cannot be installed here: {error}")
    out = tmp_path_factory.mktemp("corpus")
    summary = build_sample_corpus(out, image_size=IMAGE_SIZE, progress=False, limit=LIMIT)
    return out, summary


@pytest.fixture(scope="module")
def pairs(built):
    out, _ = built
    return read_corpus_split(out, "pairs")


def test_layout_and_counts(built, pairs):
    out, summary = built
    for name in (
        "pairs.jsonl",
        "train.jsonl",
        "zeroshot_test.jsonl",
        "retrieval_test.jsonl",
        "concepts.json",
        "LICENSES.md",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    assert summary.items == len(pairs) > 0
    assert set(summary.counts) == set(EXPECTED_LICENCES)
    for source, per_split in summary.counts.items():
        assert 0 < sum(per_split.values()) <= LIMIT, source
    assert summary.splits["train"] > 0 and summary.splits["zeroshot_test"] > 0 and summary.splits["retrieval_test"] > 0
    assert json.loads((out / "summary.json").read_text())["items"] == len(pairs)
    licences = (out / "LICENSES.md").read_text()
    for source, licence in EXPECTED_LICENCES.items():
        assert source in licences and licence in licences


def test_items_have_images_captions_source_and_licence(built, pairs):
    out, _ = built
    ids = [item["id"] for item in pairs]
    assert len(ids) == len(set(ids))
    for item in pairs:
        assert set(item) >= {"id", "image", "caption", "concept", "source", "licence", "split"}
        assert item["image"] == f"images/{item['source']}/{item['id']}.png"
        with Image.open(out / item["image"]) as image:
            image.load()
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
            assert image.getextrema() != ((255, 255),) * 3, f"{item['id']} is blank"
        assert item["caption"].strip() and len(item["caption"]) <= openclipart.CAPTION_MAX_CHARS
        assert item["concept"].strip() and item["concept"] == item["concept"].lower()
        assert item["licence"] == EXPECTED_LICENCES[item["source"]]
        assert item["split"] in sources.SPLITS
        assert not re.search(r"https?://|www\.|\S+@\S+\.\S+", item["caption"])


def test_emoji_captions_carry_the_cldr_name(pairs):
    emoji = [item for item in pairs if item["source"] != "openclipart"]
    assert emoji
    for item in emoji:
        assert item["concept"] in item["caption"].lower(), item


def test_openmoji_is_only_in_the_zeroshot_split(built, pairs):
    out, _ = built
    openmoji = [item for item in pairs if item["source"] == "openmoji"]
    assert openmoji and all(item["split"] == "zeroshot_test" for item in openmoji)
    train = read_corpus_split(out, "train")
    assert not any(item["source"] == "openmoji" for item in train)
    assert all(item["source"] == "openmoji" for item in read_corpus_split(out, "zeroshot_test"))
    concepts = json.loads((out / "concepts.json").read_text())
    assert concepts == sorted(concepts) and concepts
    train_emoji = {item["concept"] for item in train if item["source"] != "openclipart"}
    openmoji_concepts = {item["concept"] for item in openmoji}
    assert set(concepts) == openmoji_concepts & train_emoji


def test_retrieval_holdout_is_disjoint_from_train(built, pairs):
    out, _ = built
    held = read_corpus_split(out, "retrieval_test")
    train = read_corpus_split(out, "train")
    assert held and all(item["source"] == "openclipart" for item in held)
    assert not {i["id"] for i in held} & {i["id"] for i in train}
    assert not {i["image"] for i in held} & {i["image"] for i in train}
    assert not {i["origin"] for i in held} & {i["origin"] for i in train}
    assert not {i["concept"] for i in held} & {i["concept"] for i in train if i["source"] == "openclipart"}
    # split files are pairs.jsonl filtered
    for split in sources.SPLITS:
        assert read_corpus_split(out, split) == [item for item in pairs if item["split"] == split]
    with pytest.raises(ValueError):
        read_corpus_split(out, "validation")


def test_collections_stars_and_patterns_are_filtered(built, pairs):
    _, summary = built
    filters = summary.filters["openclipart"]
    for rule in ("star_gradient_pattern", "collection_title", "duplicate_artwork", "symlink_duplicate"):
        assert filters[rule] > 0, rule
    assert 3000 < filters["kept"] < 5000
    bad_titles = [re.compile(p) for p, _ in COLLECTION_TITLES] + [re.compile(p) for p in STAR_GRADIENT_PATTERN_TITLES]
    for item in (i for i in pairs if i["source"] == "openclipart"):
        rel = item["origin"].split("/svg/", 1)[1]
        assert not rel.startswith(STAR_GRADIENT_PATTERN_PATHS), rel
        assert not any(p.search(item["caption"]) for p in bad_titles), item
        assert not any(p.search(item["concept"]) for p in bad_titles), item


def test_rerun_is_cached(built):
    out, summary = built
    start = time.perf_counter()
    again = build_sample_corpus(out, image_size=IMAGE_SIZE, progress=False, limit=LIMIT)
    assert time.perf_counter() - start < 5
    assert again.cached and again.items == summary.items and again.counts == summary.counts


# ---- helpers, no sources needed


def test_emoji_key_and_skin_tones():
    assert emoji.emoji_key([0x37, 0xFE0F, 0x20E3]) == "0037-20e3"
    assert emoji.key_to_text("1f600") == "\U0001f600"
    assert emoji.is_skin_tone_variant("1f44b-1f3fd")
    assert not emoji.is_skin_tone_variant("1f3fd") and not emoji.is_skin_tone_variant("1f600")


def test_emoji_caption_is_deterministic_and_names_the_emoji():
    keywords = ["face", "grin", "grinning face", "happy"]
    captions = {emoji.emoji_caption("grinning face", keywords, f"twemoji-{i}") for i in range(40)}
    assert len(captions) > 3  # templates vary across items
    for i in range(40):
        caption = emoji.emoji_caption("grinning face", keywords, f"twemoji-{i}")
        assert caption == emoji.emoji_caption("grinning face", keywords, f"twemoji-{i}")
        assert "grinning face" in caption
    assert "an emoji of a grinning face" in captions or "a grinning face emoji" in captions
    assert all("flag: Japan" in emoji.emoji_caption("flag: Japan", ["flag"], f"x{i}") for i in range(20))
    plural = {emoji.emoji_caption("clockwise vertical arrows", ["reload", "✓"], f"y{i}") for i in range(20)}
    assert not any(" a clockwise" in c or "✓" in c for c in plural)


def test_openclipart_title_helpers():
    assert openclipart.title_from_filename("transportation/roadsigns/falling_rocks.svg") == "falling rocks"
    assert openclipart.title_from_filename("signs_and_symbols/map_symbols/aiga_first_aid1.svg") == "first aid"
    assert (
        openclipart.playing_card_title("recreation/games/cards/ornamental/ornamental_s_q.svg")
        == "queen of spades playing card"
    )
    assert (
        openclipart.playing_card_title("recreation/games/cards/white/white_d_10.svg") == "10 of diamonds playing card"
    )
    assert openclipart.playing_card_title("food/fruit/pear_01.svg") is None
    assert openclipart.clean_title("Tigre04") == "Tigre"
    assert openclipart.clean_title("PointingHand2") == "Pointing Hand"
    assert openclipart.clean_title("Blue Man#210") == "Blue Man"
    assert openclipart.clipart_caption("PC connectors", "HASH(0x8677e2c)", ["hash(0x866e640)", "computer"]) == (
        "PC connectors. computer"
    )
    caption = openclipart.clipart_caption(
        "Pear",
        "see http://example.org/pear or mail me@example.org",
        ["hash", "fruit", "pear", "Jane Doe"],
        authors=["Jane Doe"],
    )
    assert caption == "Pear. see or mail. fruit"
    long = openclipart.clipart_caption("Tree", "word " * 100, [])
    assert len(long) <= openclipart.CAPTION_MAX_CHARS and long.startswith("Tree. word")


def test_iconify_svg_document():
    iconset = emoji.IconSet(
        source="x",
        prefix="x",
        licence="MIT",
        info={},
        version="1",
        width=36,
        height=36,
        chars={"1f600": "a"},
        icons={"a": {"body": "<path d='M0 0h1v1z'/>"}},
        aliases={"b": {"parent": "a", "hFlip": True}},
    )
    assert iconset.svg("a") == (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        "viewBox=\"0 0 36 36\"><path d='M0 0h1v1z'/></svg>"
    )
    assert 'transform="translate(36 0) scale(-1 1)"' in iconset.svg("b")


def test_missing_sources_error_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "NOTO_FONT", tmp_path / "missing.ttf")
    with pytest.raises(sources.CorpusSourcesError, match="cliplab data sources --install") as error:
        sources.find_sources(tmp_path / "empty")
    assert "missing.ttf" in str(error.value) and "@iconify-json/twemoji" in str(error.value)


def test_near_copies_across_sets_and_of_held_out_images_leave_training(tmp_path):
    from cliplab.data.corpus.dedup import deduplicate

    def draw(name: str, colour: str, shift: int = 0, shape: str = "ellipse") -> str:
        image = Image.new("RGB", (64, 64), "white")
        box = (8 + shift, 8, 56 + shift, 56)
        getattr(ImageDraw.Draw(image), shape)(box, fill=colour)
        image.save(tmp_path / name)
        return name

    def item(name, source, split, concept="red apple"):
        return {"image": name, "source": source, "split": split, "concept": concept}

    items = [
        item(draw("a.png", "red"), "twemoji", "train"),
        item(draw("b.png", "red", shift=1), "noto", "train"),  # a near copy in another set
        item(draw("c.png", "red", shift=1), "twemoji", "train"),  # the same set keeps its own variants
        item(draw("d.png", "green", shape="rectangle"), "noto", "train", "green square"),
        item(draw("e.png", "green", shape="rectangle"), "fxemoji", "train", "green square"),
        item(draw("f.png", "blue", shape="rectangle"), "openmoji", "zeroshot_test", "blue square"),
        item(draw("g.png", "blue", shape="rectangle", shift=1), "noto", "train", "blue square"),  # copies held-out
        item(draw("h.png", "purple"), "openmoji", "zeroshot_test", "purple circle"),
    ]
    kept, removed = deduplicate(items, tmp_path)
    assert [i["image"] for i in kept] == ["a.png", "c.png", "d.png", "f.png", "h.png"]
    assert removed == {
        "fxemoji:near_copy_in_another_set": 1,
        "noto:near_copy_in_another_set": 1,
        "noto:near_copy_of_held_out": 1,
    }
