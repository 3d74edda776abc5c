"""Tests for cliplab.tokenizer.

Every comparison here is exact (integer ids): there is no tolerance.  The
reference is open_clip's ``SimpleTokenizer`` (its copy of OpenAI's tokenizer),
used through ``open_clip.tokenizer.tokenize``.
"""

from __future__ import annotations

import hashlib
import html
import random

import ftfy
import numpy as np
import pytest
import torch

from cliplab import tokenizer as tokmod
from cliplab.tokenizer import (
    DEFAULT_VOCAB_PATH,
    Tokenizer,
    default_tokenizer,
    tokenize,
)

VOCAB_MD5 = "933b7abbbbde62c36f02f0e6ccde464f"
SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    open_clip_tok = pytest.importorskip("open_clip.tokenizer")
    return open_clip_tok


# --------------------------------------------------------------------------- corpus

_LATIN = [
    "a photo of a dog",
    "Two cats sleeping on a red sofa.",
    "The quick brown fox jumps over the lazy dog",
    "A man riding a bicycle down a city street at night",
    "café crème brûlée à la carte",
    "Über die Brücke gehen Mädchen und Jungen, Straße",
    "¿Dónde está el niño? ¡Mañana!",
    "Zażółć gęślą jaźń",
    "İstanbul ve Iğdır, ılık şehir",
    "Tiếng Việt có dấu",
    "ΟΔΟΣ ΣΟΦΙΑΣ και ΟΔΥΣΣΕΑΣ",  # Greek final sigma under lower()
    "øre Ærø Ångström",
    "e\u0301 combining acute vs é precomposed",
    "I'm sure you'll say it's what we'd've done, they're here, we've won",
    "DON'T STOP, I'LL GO, SHE'S, IT'D",
    "rock'n'roll o'clock 'quoted' ''double''",
    "CamelCaseWord snake_case_word kebab-case-word",
    "HeLLo WoRLD MiXeD CaSe",
    "http://example.com/path?query=1&x=2#frag",
    "user@example.org #hashtag @mention",
]

_SCRIPTS = [
    "一只猫坐在垫子上",  # Chinese
    "北京欢迎你，中华人民共和国。",
    "猫が窓辺で寝ている。カタカナ、ひらがな、漢字",  # Japanese
    "ｶﾀｶﾅ 半角",  # half-width katakana (ftfy widens)
    "قطة تجلس على السجادة",  # Arabic
    "مرحبا بالعالم ١٢٣",
    "חתול יושב על השטיח",  # Hebrew
    "Кошка сидит на ковре. ПРИВЕТ МИР",  # Cyrillic
    "बिल्ली चटाई पर बैठी है",  # Devanagari
    "แมวนั่งอยู่บนเสื่อ",  # Thai
    "고양이가 매트 위에 앉아 있다",  # Korean
    "ᄒᆞᆫ글 jamo",
    "Ελληνικά γράμματα",
    "ქართული ენა",
    "Հայերեն",
    "தமிழ் எழுத்து",
]

_EMOJI = [
    "😀",
    "😀😃😄",
    "👍🏽 thumbs",
    "👨‍👩‍👧‍👦 family",  # ZWJ sequence
    "🏳️‍🌈 flag",
    "🏴‍☠️",
    "🇯🇵🇺🇸🇫🇷",  # regional-indicator flags
    "1️⃣ keycap",
    "❤️ love ♥",
    "🐈‍⬛ black cat",
    "☃ ★ ✔ ✓ ©️ ®",
]

_HTML = [
    "&amp;amp;",
    "&amp;amp;amp;lt;",
    "&lt;b&gt;bold&lt;/b&gt;",
    "<b>&amp;</b>",
    "&#x1F600; smile",
    "&#128512;",
    "&nbsp;non&nbsp;breaking",
    "&quot;quoted&quot; &#39;single&#39;",
    "&copy; 2024 &reg; &trade;",
    "fish &amp; chips",
    "&eacute;t&eacute;",
    "&notanentity; & alone &",
    "&macr;\\_(ã\x83\x84)_/&macr;",
]

_NUMBERS = [
    "0",
    "42",
    "1234567890123456789",
    "3.14159265358979",
    "2024-01-31 12:34:56",
    "+1 (555) 123-4567",
    "1,000,000",
    "v2.0.1-rc3",
    "50% off $19.99 €5 £3 ¥100",
    "٣٤٥ ۱۲۳ १२३ ๑๒๓",  # non-ASCII digits
    "½ ¼ ² ³ Ⅻ ⑤",
    "12th 1st 2nd 3rd",
]

_PUNCT = [
    "!!!???",
    "...",
    "--- ~~~ ***",
    "@#$%^&*()_+",
    "\\ / | < > [ ] { }",
    '!"$',
    "“curly” ‘quotes’ — dash – en … ellipsis",
    "«guillemets» „low“",
    "ｆｕｌｌｗｉｄｔｈ　ＴＥＸＴ！",
    "ﬂubberiﬁc ligatures",
    "'s 't 're 've 'm 'll 'd",
    "'S'T'RE'VE'M'LL'D",
    "it'ſ here 'ſ",  # long s: matches 's only because the regex ignores case
    ":-) ;-) :D <3",
    "a.b.c,d;e:f",
]

_MOJIBAKE = [
    "CafÃ©",
    "âœ” No problems",
    "Ã¼ber cool",
    "donâ€™t",
    "The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t have eyebrows.",
    "ÐŸÑ€Ð¸Ð²ÐµÑ‚",
    "Ã  la mode",
    "sÃ³",
]

_CONTROL = [
    "tab\tseparated\tvalues",
    "line\nbreaks\r\nand\rcarriage",
    "\x1b[31mred\x1b[0m terminal",
    "nul\x00byte",
    "del\x7fchar",
    "zero\u200bwidth",
    "\ufeffbom",
    "form\x0cfeed\x0bvtab",
    "ideographic\u3000space",
    "nbsp\xa0here",
    "thin\u2009space",
    "line\u2028separator",
    "next\x85line",
    "c1\x80\x9dcontrols",
]

_WHITESPACE_ONLY = ["", " ", "   ", "\t", "\n", "\t\n\r ", "\u3000", "\xa0\xa0", "\u2009\u2003"]

_SPECIAL_FREE_FRAGMENTS = _LATIN + _SCRIPTS + _EMOJI + _HTML + _NUMBERS + _PUNCT + _MOJIBAKE + _CONTROL

_SEPARATORS = [" ", "  ", "", "\t", "\n", " \n ", ", ", ". ", "\r\n", "\u3000"]


def _random_case(rng: random.Random, s: str) -> str:
    mode = rng.random()
    if mode < 0.6:
        return s
    if mode < 0.75:
        return s.upper()
    if mode < 0.85:
        return s.title()
    return "".join(c.upper() if rng.random() < 0.5 else c for c in s)


def _random_ascii(rng: random.Random, n: int) -> str:
    alphabet = [chr(i) for i in range(32, 127)] + ["\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\x0c"]
    return "".join(rng.choice(alphabet) for _ in range(n))


def build_corpus(seed: int = 1234, n_random: int = 2200) -> list[str]:
    """Fixed fragments plus seeded random combinations (no network)."""
    rng = random.Random(seed)
    corpus = list(_SPECIAL_FREE_FRAGMENTS) + list(_WHITESPACE_ONLY)
    for _ in range(n_random):
        kind = rng.random()
        if kind < 0.08:
            s = _random_ascii(rng, rng.randint(0, 60))
        elif kind < 0.12:
            # long strings, well past 77 tokens
            s = " ".join(rng.choice(_SPECIAL_FREE_FRAGMENTS) for _ in range(rng.randint(20, 60)))
        elif kind < 0.14:
            s = rng.choice(["a", "é", "中", "😀", "!", "1", "ab"]) * rng.randint(50, 400)
        else:
            parts = [_random_case(rng, rng.choice(_SPECIAL_FREE_FRAGMENTS)) for _ in range(rng.randint(1, 6))]
            s = ""
            for p in parts:
                s += p + rng.choice(_SEPARATORS)
            if rng.random() < 0.2:
                s = rng.choice(_WHITESPACE_ONLY) + s + rng.choice(_WHITESPACE_ONLY)
        corpus.append(s)
    corpus.append("word " * 2000)  # very long
    corpus.append("x" * 5000)
    return corpus


CORPUS = build_corpus()


# --------------------------------------------------------------------------- (1) known ids


def test_hello_world_ids(tok):
    """Exact: "hello world" -> [49406, 3306, 1002, 49407] then zeros."""
    assert tok.encode("hello world") == [3306, 1002]
    row = tok("hello world")
    assert row.shape == (1, 77) and row.dtype == torch.long
    assert row[0, :4].tolist() == [SOT, 3306, 1002, EOT]
    assert row[0, 4:].eq(0).all()


def test_vocab_size_and_special_ids(tok):
    """Exact: 49,408 ids; sot 49406, eot 49407; default context length 77."""
    assert tok.vocab_size == 49408
    assert tok.sot_token_id == SOT
    assert tok.eot_token_id == EOT
    assert tok.context_length == 77
    assert Tokenizer(context_length=32).context_length == 32


def test_vocab_layout(tok):
    """Exact: 256 byte symbols, then the same with </w>, then merges."""
    symbols = list(tokmod.bytes_to_unicode().values())
    assert len(set(symbols)) == 256
    assert tok.decode([tok.encode("a")[0]]) == "a"
    # id 0 is '!' (the first visible byte), id 256 is '!</w>'
    assert tok.encode("!") == [256]
    assert tok._id_to_token[0] == "!" and tok._id_to_token[256] == "!</w>"


def test_empty_and_whitespace_only(tok):
    """Exact: empty / whitespace-only strings give [sot, eot, 0, ...]."""
    expected = [SOT, EOT] + [0] * 75
    for s in _WHITESPACE_ONLY:
        assert tok.encode(s) == []
        assert tok(s)[0].tolist() == expected


def test_batch_shapes(tok):
    """Exact shapes/dtypes: str -> [1, L], list -> [N, L], empty list -> [0, L]."""
    assert tok("a").shape == (1, 77)
    assert tok(["a", "b", "c"], context_length=16).shape == (3, 16)
    empty = tok([])
    assert empty.shape == (0, 77) and empty.dtype == torch.long
    assert tok(("a", "b")).shape == (2, 77)  # tuples are sequences too
    assert torch.equal(tok(iter(["a", "b"])), tok(["a", "b"]))


def test_bad_arguments(tok):
    """Errors: context_length < 2 -> ValueError; non-str texts -> TypeError."""
    with pytest.raises(ValueError):
        tok("a", context_length=1)
    with pytest.raises(ValueError):
        Tokenizer(context_length=0)
    with pytest.raises(TypeError):
        tok([b"bytes"])
    with pytest.raises(TypeError):
        tok.encode(None)


def test_module_level_tokenize():
    """Exact: tokenize() uses one lazily built default tokenizer."""
    assert default_tokenizer() is default_tokenizer()
    out = tokenize(["hello world", ""])
    assert out.shape == (2, 77)
    assert out[0, :4].tolist() == [SOT, 3306, 1002, EOT]
    assert out[1, :2].tolist() == [SOT, EOT]
    assert tokenize("hello world", context_length=5).tolist() == [[SOT, 3306, 1002, EOT, 0]]


# --------------------------------------------------------------------------- (2) parity


def test_corpus_is_large_and_varied():
    """The parity corpus has >= 2,000 strings, incl. long, empty and non-ASCII ones."""
    assert len(CORPUS) >= 2000
    assert sum(not s.isascii() for s in CORPUS) > 1000
    assert any(len(s) > 4000 for s in CORPUS)
    assert "" in CORPUS


def test_encode_matches_open_clip(tok, open_clip_tokenizer):
    """Exact: encode() equals SimpleTokenizer.encode() on every corpus string (no truncation)."""
    ref = open_clip_tokenizer.SimpleTokenizer()
    mismatches = [s for s in CORPUS if tok.encode(s) != ref.encode(s)]
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:3]!r}"


@pytest.mark.parametrize("context_length", [77, 16])
def test_batch_matches_open_clip_tokenize(open_clip_tokenizer, context_length):
    """Exact: a fresh Tokenizer's batch output equals open_clip.tokenizer.tokenize, cold and warm cache."""
    tok = Tokenizer()
    expected = open_clip_tokenizer.tokenize(CORPUS, context_length=context_length)
    cold = tok(CORPUS, context_length=context_length)
    warm = tok(CORPUS, context_length=context_length)
    assert cold.dtype == expected.dtype == torch.long
    assert cold.shape == expected.shape
    bad = (cold != expected).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"{len(bad)} rows differ, e.g. {[CORPUS[i] for i in bad[:3]]!r}"
    assert torch.equal(warm, expected)


def test_single_string_calls_match_open_clip(tok, open_clip_tokenizer):
    """Exact: one-string calls agree too (sample of 200 corpus strings)."""
    for s in random.Random(7).sample(CORPUS, 200):
        assert torch.equal(tok(s), open_clip_tokenizer.tokenize(s)), repr(s)


def test_results_independent_of_cache_bounds(open_clip_tokenizer, monkeypatch):
    """Exact: tiny cache bounds (constant eviction) change nothing; caches stay bounded."""
    monkeypatch.setattr(tokmod, "_CHUNK_CACHE_SIZE", 8)
    monkeypatch.setattr(tokmod, "_TEXT_CACHE_SIZE", 4)
    tok = Tokenizer()
    sample = CORPUS[:600]
    assert torch.equal(tok(sample), open_clip_tokenizer.tokenize(sample))
    assert len(tok._chunk_cache) <= 8 and len(tok._text_cache) <= 4


def test_plain_ascii_fast_path_is_exact():
    """Exact: strings that skip ftfy/unescape are unchanged by them (up to whitespace)."""
    rng = random.Random(99)
    checked = 0
    for _ in range(3000):
        s = _random_ascii(rng, rng.randint(0, 40))
        if rng.random() < 0.5:
            s = s.replace("&", "")
        if tokmod._is_plain_ascii(s):
            full = html.unescape(html.unescape(ftfy.fix_text(s)))
            assert " ".join(full.split()) == " ".join(s.split()), repr(s)
            checked += 1
        else:
            assert not s.isascii() or "&" in s or any((c < " " and c not in "\t\n\r") or c == "\x7f" for c in s)
    assert checked > 500


def test_decode_matches_open_clip(tok, open_clip_tokenizer):
    """Exact up to whitespace: decode() equals SimpleTokenizer.decode() on corpus ids."""
    ref = open_clip_tokenizer.SimpleTokenizer()
    for s in CORPUS[:800]:
        ids = tok.encode(s)
        assert tok.decode(ids) == " ".join(ref.decode(ids).split()), repr(s)


def test_clean_matches_open_clip(tok, open_clip_tokenizer):
    """Exact: Tokenizer.clean equals open_clip's lower-case cleaning on the whole corpus."""
    ref = open_clip_tokenizer
    for s in CORPUS:
        assert tok.clean(s) == ref.whitespace_clean(ref.basic_clean(s)).lower(), repr(s)


def test_decode_batch(tok):
    """Exact: decode_batch decodes each row; decode refuses multi-row arrays."""
    texts = ["a photo of a cat", "", "Two DOGS!"]
    batch = tok(texts)
    assert tok.decode_batch(batch) == ["a photo of a cat", "", "two dogs !"]
    with pytest.raises(ValueError):
        tok.decode(batch)
    assert tok.decode(batch[:1]) == "a photo of a cat"


def test_decode_padding_and_special_tokens(tok):
    """Exact: decode strips padding, skips or shows specials as asked."""
    row = tok("Hello, World!")[0]
    assert tok.decode(row) == "hello , world !"
    assert tok.decode(row.numpy()) == "hello , world !"
    assert tok.decode(row.tolist(), skip_special_tokens=False) == "<|startoftext|> hello , world ! <|endoftext|>"
    # id 0 ('!' without </w>) inside a sequence is kept; trailing zeros are padding
    ids = tok.encode('!"$')
    assert 0 in ids
    assert tok.decode(ids + [0, 0, 0]) == '!"$'
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])


def test_special_token_text(tok, open_clip_tokenizer):
    """Documented difference: literal '<|endoftext|>' is special (as in OpenAI's CLIP);
    open_clip's copy names its specials '<start_of_text>'/'<end_of_text>' instead."""
    assert tok.encode("<|startoftext|>a photo<|endoftext|>") == [SOT] + tok.encode("a photo") + [EOT]
    assert tok.encode("<|EndOfText|>") == [EOT]  # case-insensitive, like the reference
    # open_clip's spelling is ordinary text here: same pieces as with a space
    # after "<", which open_clip does not treat as special either
    ref = open_clip_tokenizer.SimpleTokenizer()
    assert ref.encode("<end_of_text>") == [EOT]
    assert tok.encode("<end_of_text>") == ref.encode("< end_of_text>")
    assert EOT not in tok.encode("<end_of_text>")


# --------------------------------------------------------------------------- (3) truncation


@pytest.mark.parametrize("context_length", [77, 10, 2])
def test_truncation_keeps_eot_last(tok, context_length):
    """Exact: a long row is [sot, first L-2 ids, eot] — eot in the last position, exactly once."""
    text = " ".join(f"word{i}" for i in range(300))
    ids = tok.encode(text)
    assert len(ids) > 77
    row = tok(text, context_length=context_length)[0].tolist()
    assert len(row) == context_length
    assert row == [SOT] + ids[: context_length - 2] + [EOT]
    assert row.count(EOT) == 1


def test_exact_fit_is_not_truncated(tok):
    """Exact: L-2 ids fit without truncation; L-1 ids lose the last id."""
    ids = tok.encode("a " * 75)
    assert len(ids) == 75
    assert tok("a " * 75)[0].tolist() == [SOT] + ids + [EOT]
    assert tok("a " * 76)[0].tolist() == [SOT] + ids + [EOT]


# --------------------------------------------------------------------------- (4) attention mask


def test_attention_mask(tok):
    """Exact: mask is 1 up to and including eot, 0 after; equals ids != 0 except where
    a real id 0 ('!' inside a word) occurs, which the mask still counts."""
    texts = CORPUS[:500] + ['!"$ test']
    batch = tok.encode_batch(texts)
    ids, mask = torch.from_numpy(batch.ids), torch.from_numpy(batch.attention_mask)
    assert mask.dtype == torch.long and mask.shape == ids.shape
    eot_pos = (ids == EOT).int().argmax(dim=1)
    expected = (torch.arange(77)[None, :] <= eot_pos[:, None]).long()
    assert torch.equal(mask, expected)
    has_inner_zero = ((ids == 0) & (mask == 1)).any(dim=1)
    assert has_inner_zero[-1]  # the '!"$' row
    assert torch.equal(mask[~has_inner_zero], (ids[~has_inner_zero] != 0).long())
    # same ids with or without the mask
    assert torch.equal(ids, tok(texts))


def test_attention_mask_truncated_row(tok):
    """Exact: a truncated row's mask is all ones."""
    batch = tok.encode_batch("word " * 200)
    ids, mask = torch.from_numpy(batch.ids), torch.from_numpy(batch.attention_mask)
    assert mask.sum().item() == 77 and ids[0, -1].item() == EOT


# --------------------------------------------------------------------------- (5) vocab file


def test_vocab_file_md5():
    """Exact: the shipped vocabulary is OpenAI's bpe_simple_vocab_16e6.txt.gz."""
    digest = hashlib.md5(DEFAULT_VOCAB_PATH.read_bytes()).hexdigest()
    assert digest == VOCAB_MD5


def test_vocab_licence_shipped():
    """The MIT notice for the vocabulary file is next to it."""
    licence = DEFAULT_VOCAB_PATH.parent / "LICENSE-bpe_simple_vocab_16e6.txt"
    text = licence.read_text(encoding="utf-8")
    assert "OpenAI" in text and "MIT" in text and "Permission is hereby granted" in text


def test_output_is_contiguous_int64(tok):
    """Exact: output is a C-contiguous int64 tensor (numpy-backed)."""
    out = tok(["a", "b"])
    assert out.is_contiguous()
    assert out.numpy().dtype == np.int64
