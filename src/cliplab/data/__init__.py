"""Image-text pairs: reading them from tables, folders and WebDataset shards, and the sample corpus.

* :mod:`cliplab.data.pairs`: tables and image folders (:func:`read_pairs`),
  source classification (:func:`source_kind`) and the caption filter
  (:func:`filter_captions`);
* :mod:`cliplab.data.shards`: WebDataset tar shards (:func:`expand_shards`,
  :func:`iter_shard`, :func:`pack_shards`);
* :mod:`cliplab.data.loader`: the datasets (:class:`PairDataset`,
  :class:`ShardStream`) and the deterministic, resumable training loader
  (:func:`make_train_loader`); its docstring explains the ordering and resumption rules.

* :mod:`cliplab.data.corpus`: the offline sample corpus built from openly licensed art.

The trainer (:mod:`cliplab.train`) reads its data through this package; nothing here imports the
trainer. The public names of pairs, shards and loader are re-exported here.
"""

from __future__ import annotations

from .loader import (
    SKIP_REASONS,
    DataSpec,
    PairDataset,
    ShardStream,
    TrainLoader,
    make_train_loader,
)
from .pairs import (
    CAPTION_COLUMNS,
    CAPTION_RULES,
    IMAGE_COLUMNS,
    Pair,
    caption_rule,
    filter_captions,
    read_pairs,
    source_kind,
)
from .shards import ShardSample, expand_shards, iter_shard, pack_shards

__all__ = [
    "CAPTION_COLUMNS",
    "CAPTION_RULES",
    "IMAGE_COLUMNS",
    "SKIP_REASONS",
    "DataSpec",
    "Pair",
    "PairDataset",
    "ShardSample",
    "ShardStream",
    "TrainLoader",
    "caption_rule",
    "expand_shards",
    "filter_captions",
    "iter_shard",
    "make_train_loader",
    "pack_shards",
    "read_pairs",
    "source_kind",
]
