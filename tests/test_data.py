"""Tests for cliplab.train.data: sources, caption filter, shards, streaming and exact resumption.

Everything runs on tiny synthetic images written with PIL into ``tmp_path``.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cliplab.data import (
    CAPTION_RULES,
    DataSpec,
    Pair,
    PairDataset,
    ShardStream,
    expand_shards,
    filter_captions,
    iter_shard,
    make_train_loader,
    pack_shards,
    read_pairs,
    source_kind,
)
from cliplab.preprocess import Preprocessor
from cliplab.tokenizer import Tokenizer

IMAGE_SIZE = 8


# --------------------------------------------------------------------------- helpers


def write_image(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> Path:
    """A small random RGB image (PNG, or JPEG for .jpg) whose pixels depend on ``seed``."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_pairs(folder: Path, n: int, prefix: str = "s", start: int = 0) -> list[Pair]:
    """``n`` pairs with distinct images and captions ``"<prefix> <i>"``."""
    pairs = []
    for i in range(start, start + n):
        image = write_image(folder / f"{prefix}{i:03d}.png", seed=hash((prefix, i)) % 2**32)
        pairs.append(Pair(image, f"{prefix} {i}"))
    return pairs


def id_tokenizer(caption: str) -> torch.Tensor:
    """Test tokenizer: ``"a 17"`` -> ``[ord("a"), 17]`` (identifies the sample exactly)."""
    source, number = caption.split()
    return torch.tensor([ord(source[0]), int(number)], dtype=torch.long)


class CountingPreprocess:
    """A Preprocessor that counts its calls (in-process use only)."""

    def __init__(self) -> None:
        self.inner = Preprocessor(image_size=IMAGE_SIZE)
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return self.inner(image)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(context_length=16)


@pytest.fixture(scope="module")
def preprocess() -> Preprocessor:
    return Preprocessor(image_size=IMAGE_SIZE)


def ids_of(batches) -> list[tuple[int, int]]:
    return [tuple(row.tolist()) for _, tokens in batches for row in tokens]


def take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(iter(loader), n))


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for i, ((pa, ta), (pb, tb)) in enumerate(zip(a, b)):
        assert torch.equal(pa, pb), f"pixels differ in batch {i}"
        assert torch.equal(ta, tb), f"tokens differ in batch {i}"


# --------------------------------------------------------------------------- reading pairs


def test_read_csv_tsv_jsonl_with_relative_and_absolute_paths(tmp_path):
    images = [write_image(tmp_path / "imgs" / f"{i}.png", seed=i) for i in range(3)]
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "data.csv").write_text(
        f'filepath,title,other\n../imgs/0.png,"a cat, sitting ",x\n{images[1]},dog,y\n,no image,z\n../imgs/2.png,,w\n',
        encoding="utf-8",
    )
    (meta / "data.tsv").write_text("Caption\tImage\nred car\t../imgs/0.png\nblue sky\t../imgs/1.png\n")
    (meta / "data.jsonl").write_text(
        json.dumps({"path": "../imgs/2.png", "text": "green tree"})
        + "\n\n"
        + json.dumps({"path": "../imgs/0.png", "text": 42})
        + "\n"
    )
    (meta / "custom.csv").write_text("file_loc,desc,caption\n../imgs/1.png,the desc,not this\n")

    csv_pairs = read_pairs(meta / "data.csv")
    assert [p.caption for p in csv_pairs] == ["a cat, sitting", "dog", ""]  # the row without an image is dropped
    assert [p.image.resolve() for p in csv_pairs] == [images[0].resolve(), images[1].resolve(), images[2].resolve()]
    assert csv_pairs[0].image == meta / "../imgs/0.png"  # relative paths resolve against the table's folder

    tsv_pairs = read_pairs(str(meta / "data.tsv"))  # header names matched case-insensitively
    assert [(p.image.resolve(), p.caption) for p in tsv_pairs] == [
        (images[0].resolve(), "red car"),
        (images[1].resolve(), "blue sky"),
    ]
    jsonl_pairs = read_pairs(meta / "data.jsonl")
    assert [(p.image.resolve(), p.caption) for p in jsonl_pairs] == [
        (images[2].resolve(), "green tree"),
        (images[0].resolve(), "42"),
    ]
    custom = read_pairs(meta / "custom.csv", image_column="file_loc", caption_column="desc")
    assert [(p.image.resolve(), p.caption) for p in custom] == [(images[1].resolve(), "the desc")]
    with pytest.raises(ValueError, match="image column"):
        read_pairs(meta / "custom.csv")
    assert source_kind(meta / "data.csv") == "pairs"


def test_read_folder_recursive_with_caption_files(tmp_path):
    root = tmp_path / "photos"
    write_image(root / "b.jpg", 1)
    (root / "b.txt").write_text("  second photo\n")
    write_image(root / "a" / "x.png", 2)
    (root / "a" / "x.txt").write_text("first photo")
    write_image(root / "a" / "no_caption.png", 3)  # skipped: no side file
    (root / "notes.txt").write_text("not a caption of anything")
    pairs = read_pairs(root)
    assert pairs == [Pair(root / "a" / "x.png", "first photo"), Pair(root / "b.jpg", "second photo")]
    assert source_kind(root) == "pairs"


# --------------------------------------------------------------------------- caption filter


def test_filter_captions_counts_per_rule():
    captions = {
        "keep": ["a photo of a dog", "COVID-19 testing site", "2 dogs on a beach", "Windows 10 desktop", "x"],
        "empty": ["", "   ", "\n\t"],
        "numeric": ["12345", "978-3-16-148410-0", "0-306-40615-X", "ISBN 0306406152", "3.50"],
        "filename": [
            "IMG_1234.JPG",
            "DSC0001",
            "photo.png",
            "12345678_abcdef",
            "PXL_20210101_123456789",
            "a1b2c3d4e5f6a7b8",
        ],
    }
    pairs = [Pair(Path(f"{i}.jpg"), c) for i, c in enumerate(c for group in captions.values() for c in group)]
    kept, counts = filter_captions(pairs)
    assert [p.caption for p in kept] == captions["keep"]
    assert counts == {"empty": 3, "numeric": 5, "filename": 6}
    assert tuple(counts) == CAPTION_RULES


# --------------------------------------------------------------------------- shards


def test_pack_shards_round_trip_is_byte_identical(tmp_path):
    pairs = make_pairs(tmp_path / "src", 7)
    jpeg = write_image(tmp_path / "src" / "photo.JPEG", seed=99)
    pairs.append(Pair(jpeg, "a jpeg with an upper-case suffix"))
    out = tmp_path / "shards"
    shards = pack_shards(pairs, out, samples_per_shard=3, progress=False)
    assert shards == [out / f"shard-{i:06d}.tar" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in shards]  # no temporary files left

    samples = [s for shard in shards for s in iter_shard(shard)]
    assert [s.caption for s in samples] == [p.caption for p in pairs]
    assert [s.image for s in samples] == [p.image.read_bytes() for p in pairs]  # original bytes, no re-encode
    assert [s.ext for s in samples] == ["png"] * 7 + ["jpeg"]
    assert len({s.key for s in samples}) == len(pairs)
    assert [len(list(iter_shard(s))) for s in shards] == [3, 3, 2]

    with pytest.raises(FileExistsError):
        pack_shards(pairs, out, progress=False)
    again = pack_shards(pairs[:2], out, samples_per_shard=3, progress=False, overwrite=True)
    assert again == [out / "shard-000000.tar"] and sorted(out.iterdir()) == again  # stale shards removed


def test_expand_shards_patterns(tmp_path):
    shards = pack_shards(make_pairs(tmp_path / "src", 4), tmp_path / "d", samples_per_shard=1, progress=False)
    d = tmp_path / "d"
    assert expand_shards(f"{d}/shard-{{000000..000002}}.tar") == shards[:3]
    assert expand_shards(f"{d}/shard-{{000003,000001}}.tar") == [shards[3], shards[1]]
    assert expand_shards(f"{d}/*.tar") == shards
    assert expand_shards(d) == shards
    assert source_kind(d) == source_kind(f"{d}/*.tar") == "shards"
    with pytest.raises(FileNotFoundError):
        expand_shards(f"{d}/shard-{{000000..000009}}.tar")


def _pack_sources(tmp_path: Path, name: str, sizes: list[int], start: int = 0) -> Path:
    """Shards ``tmp_path/name/shard-*.tar`` holding ``sizes[i]`` samples each (captions "<name> <i>")."""
    folder = tmp_path / name
    folder.mkdir()
    n = start
    for s, size in enumerate(sizes):
        pairs = make_pairs(tmp_path / f"{name}-src{s}", size, prefix=name, start=n)
        part = pack_shards(pairs, tmp_path / f"{name}-tmp{s}", samples_per_shard=size, progress=False)
        part[0].rename(folder / f"shard-{s:06d}.tar")
        n += size
    return folder


def test_shard_stream_two_ranks_two_workers_cover_each_sample_once_per_epoch(tmp_path, preprocess):
    sizes = [3, 5, 2, 4, 6, 1, 4]
    folder = _pack_sources(tmp_path, "s", sizes)
    epochs: list[list[tuple[int, int]]] = [[], []]
    for rank in range(2):
        stream = ShardStream(
            f"{folder}/shard-{{000000..000006}}.tar",
            preprocess,
            id_tokenizer,
            rank=rank,
            world_size=2,
            seed=5,
            shuffle_buffer=4,
            batch_size=3,
            epochs=2,
        )
        rank_ids = ids_of(DataLoader(stream, batch_size=3, num_workers=2))  # 2 ranks x 2 workers
        rank_epoch0 = sum(
            1
            for _ in ShardStream(
                folder, preprocess, id_tokenizer, rank=rank, world_size=2, seed=5, shuffle_buffer=4, epochs=1
            )
        )
        epochs[0].extend(rank_ids[:rank_epoch0])
        epochs[1].extend(rank_ids[rank_epoch0:])
    everything = [(ord("s"), i) for i in range(sum(sizes))]
    assert sorted(epochs[0]) == everything  # each sample exactly once per epoch, over all ranks and workers
    assert sorted(epochs[1]) == everything
    assert epochs[0] != epochs[1]  # shard order and shuffle buffer are reseeded per epoch


def test_shard_stream_resampling_follows_weights(tmp_path, preprocess):
    a = _pack_sources(tmp_path, "a", [10] * 4)
    b = _pack_sources(tmp_path, "b", [10] * 4)
    stream = ShardStream(
        [(f"{a}/*.tar", 0.8), (str(b), 0.2)], preprocess, id_tokenizer, seed=1, shuffle_buffer=20, resample=True
    )
    ids = [tuple(t.tolist()) for _, t in itertools.islice(iter(stream), 2000)]
    share_a = sum(1 for s, _ in ids if s == ord("a")) / len(ids)
    assert abs(share_a - 0.8) < 0.08, share_a
    assert len(set(ids)) > 60  # shards drawn with replacement from both sources


def _raw_tar(path: Path, members: list[tuple[str, bytes]], truncate: int | None = None) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data if truncate is None else data[:truncate])
    return path


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_handles_common_formats(tmp_path, fmt, monkeypatch):
    long_dir = "/".join(["deep" * 6] * 5)  # 124 characters: needs a ustar prefix or an extended header
    members = [
        (f"{long_dir}/k1.jpg", b"jpeg bytes"),
        (f"{long_dir}/k1.txt", b"first"),
        ("k2.png", b"x" * 1500),
        ("k2.txt", "caf\u00e9 au lait".encode()),
        ("k3.webp", b""),
        ("k3.txt", b"empty image file"),
        ("d\u00e9j\u00e0/k4.jpg", b"accented key"),
        ("d\u00e9j\u00e0/k4.txt", b"fourth"),
    ]
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w", format=fmt) as tf:
        folder = tarfile.TarInfo("a-folder")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
        link = tarfile.TarInfo("k2.link")
        link.type, link.linkname = tarfile.SYMTYPE, "k2.png"
        tf.addfile(link)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

    import cliplab.data.shards as data_module

    fallback = []
    original = data_module._tarfile_members
    monkeypatch.setattr(data_module, "_tarfile_members", lambda *a: fallback.append(1) or original(*a))
    got = [(s.key, s.ext, s.image, s.caption) for s in iter_shard(path)]
    expected = [
        (name.rsplit(".", 1)[0], name.rsplit(".", 1)[1], data, members[i + 1][1].decode())
        for i, (name, data) in enumerate(members)
        if not name.endswith(".txt")
    ]
    assert got == expected
    assert bool(fallback) == (fmt != tarfile.USTAR_FORMAT)  # plain ustar headers take the fast path


def test_corrupt_image_in_shard_is_skipped_and_counted(tmp_path, preprocess):
    def png(seed: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(out, "PNG")
        return out.getvalue()

    folder = tmp_path / "shards"
    folder.mkdir()
    _raw_tar(
        folder / "0.tar",
        [
            ("k0.png", png(0)),
            ("k0.txt", b"c 0"),
            ("k0.json", b"{}"),
            ("k1.png", b"this is not an image"),
            ("k1.txt", b"c 1"),
            ("k2.png", png(2)),
            ("k2.txt", b"c 2"),
            ("k3.png", png(3)),  # no caption
            ("k4.webp", png(4)),
            ("k4.txt", b"c 4"),  # wrong extension for the bytes: decoded by content
            ("k5.png", png(5)),
            ("k5.txt", b"   "),  # empty caption, filtered
            ("k6.png", png(6)),
            ("k6.txt", b"c 6"),
        ],
    )
    _raw_tar(
        folder / "1.tar",
        [("m0.png", png(10)), ("m0.txt", b"c 10"), ("m1.png", png(11)), ("m1.txt", b"c 11")],
        truncate=1024 + 700,
    )  # damaged: only m0 is complete
    stream = ShardStream(folder, preprocess, id_tokenizer, seed=0, shuffle_buffer=1, batch_size=1, epochs=1)
    ids = sorted(n for _, (_, n) in ((p, t.tolist()) for p, t in stream))
    assert sorted(set(ids)) == [0, 2, 4, 6, 10]
    assert stream.skipped == {"decode_error": 1, "incomplete": 1, "caption_empty": 1, "shard_error": 1}


# --------------------------------------------------------------------------- exact resumption


def _csv_source(tmp_path: Path, n: int) -> Path:
    pairs = make_pairs(tmp_path / "images", n)
    rows = ["image,caption"] + [f"images/{p.image.name},photo number {i}" for i, p in enumerate(pairs)]
    rows.insert(4, "images/missing.png,this file does not exist")  # unreadable: skipped and replaced
    rows.insert(7, "images/s000.png,IMG_0001.JPG")  # removed by the caption filter
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_resume_csv_matches_uninterrupted_run_across_epochs(tmp_path, tokenizer):
    spec = DataSpec([(str(_csv_source(tmp_path, 10)), 1.0)])  # 11 usable rows per epoch (one unreadable)
    batch, total = 4, 9  # 36 samples: more than three epochs
    counting = CountingPreprocess()
    full_loader = make_train_loader(spec, counting, tokenizer, batch, seed=3, workers=0)
    full = take(full_loader, total)
    assert full_loader.filter_counts == {"empty": 0, "numeric": 0, "filename": 1}
    assert full_loader.num_samples == 11
    assert full_loader.skipped.get("missing", 0) >= 3  # once per epoch
    assert all(p.shape == (batch, 3, IMAGE_SIZE, IMAGE_SIZE) and t.shape == (batch, 16) for p, t in full)
    assert full_loader.epoch_of_batch(0) == 0 and full_loader.epoch_of_batch(3) == 1

    for k in (2, 5):
        counting = CountingPreprocess()
        resumed = take(make_train_loader(spec, counting, tokenizer, batch, seed=3, workers=0, start_batch=k), total - k)
        assert_same_batches(resumed, full[k:])
        assert counting.calls <= (total - k) * batch + 1  # nothing before batch k was decoded

    pre = Preprocessor(image_size=IMAGE_SIZE)
    other_seed = take(make_train_loader(spec, pre, tokenizer, batch, seed=4, workers=0), 3)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(other_seed, full))

    # worker processes change nothing
    parallel = take(make_train_loader(spec, pre, tokenizer, batch, seed=3, workers=2, start_batch=1), total - 1)
    assert_same_batches(parallel, full[1:])


def test_csv_ranks_partition_each_epoch(tmp_path):
    pairs = make_pairs(tmp_path / "images", 10, prefix="r")
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps({"image": str(p.image), "caption": p.caption}) + "\n" for p in pairs))
    spec = DataSpec([str(table)])
    pre = Preprocessor(image_size=IMAGE_SIZE)
    per_rank = [
        ids_of(take(make_train_loader(spec, pre, id_tokenizer, 5, rank=r, world_size=2, workers=0), 2))
        for r in range(2)
    ]
    epoch0 = per_rank[0][:5] + per_rank[1][:5]
    epoch1 = per_rank[0][5:] + per_rank[1][5:]
    assert sorted(epoch0) == sorted(epoch1) == [(ord("r"), i) for i in range(10)]
    assert epoch0 != epoch1  # a new permutation each epoch


def test_resume_shards_matches_uninterrupted_run_across_epochs(tmp_path, tokenizer):
    pairs = make_pairs(tmp_path / "src", 15)
    bad = tmp_path / "src" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    pairs.insert(6, Pair(bad, "a corrupt image inside a shard"))
    pack_shards(pairs, tmp_path / "shards", samples_per_shard=4, progress=False)  # 4 shards: 4, 4, 4, 4
    spec = DataSpec([(f"{tmp_path}/shards/shard-{{000000..000003}}.tar", 1.0)], shuffle_buffer=5)
    batch, total = 4, 10  # 40 samples, 16 per epoch: the run crosses two epoch boundaries
    pre = Preprocessor(image_size=IMAGE_SIZE)
    full_loader = make_train_loader(spec, pre, tokenizer, batch, seed=7, workers=0)
    full = take(full_loader, total)
    assert full_loader.skipped.get("decode_error", 0) >= 2

    for k in (3, 6):
        counting = CountingPreprocess()
        resumed = take(make_train_loader(spec, counting, tokenizer, batch, seed=7, workers=0, start_batch=k), total - k)
        assert_same_batches(resumed, full[k:])
        assert counting.calls <= (total - k) * batch + 1  # skipped at tar-member level, not decoded

    # batches do not depend on the number of workers, with or without a resume point
    assert_same_batches(take(make_train_loader(spec, pre, tokenizer, batch, seed=7, workers=2), total), full)
    assert_same_batches(
        take(make_train_loader(spec, pre, tokenizer, batch, seed=7, workers=2, start_batch=5), total - 5), full[5:]
    )


def test_map_resampling_follows_weights(tmp_path):
    def table(name: str, n: int) -> str:
        pairs = make_pairs(tmp_path / name, n, prefix=name)
        path = tmp_path / f"{name}.csv"
        path.write_text("path,text\n" + "".join(f"{p.image},{p.caption}\n" for p in pairs))
        return str(path)

    spec = DataSpec([(table("a", 3), 0.25), (table("b", 6), 0.75)], resample=True)
    loader = make_train_loader(spec, Preprocessor(image_size=4), id_tokenizer, 50, seed=2, workers=0)
    counts = Counter(s for s, _ in ids_of(take(loader, 12)))
    assert abs(counts[ord("a")] / 600 - 0.25) < 0.06


def test_pair_dataset_replaces_unreadable_and_counts(tmp_path, preprocess):
    pairs = make_pairs(tmp_path, 3)
    pairs.insert(1, Pair(tmp_path / "gone.png", "s 99"))
    ds = PairDataset(pairs, preprocess, id_tokenizer)
    assert ds[1][1].tolist() == [ord("s"), 1]  # replaced by the next readable pair
    assert ds.skipped == {"missing": 1}
    assert ds.load(1) is None and ds.skipped == {"missing": 2}
