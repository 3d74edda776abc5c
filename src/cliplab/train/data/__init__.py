"""Training data pipeline: image-text pairs from tables, folders and WebDataset shards.

* :mod:`cliplab.train.data.pairs`: tables and image folders (:func:`read_pairs`),
  source classification (:func:`source_kind`) and the caption filter
  (:func:`filter_captions`);
* :mod:`cliplab.train.data.shards`: WebDataset tar shards (:func:`expand_shards`,
  :func:`iter_shard`, :func:`pack_shards`);
* :mod:`cliplab.train.data.loader`: the datasets (:class:`PairDataset`,
  :class:`ShardStream`) and the deterministic, resumable training loader
  (:func:`make_train_loader`); its docstring explains the ordering and resumption rules.

The public names of the three modules are re-exported here.
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
    IMAGE_EXTENSIONS,
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
    "IMAGE_EXTENSIONS",
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
