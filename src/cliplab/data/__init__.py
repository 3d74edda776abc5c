"""Image-text pairs: reading them from tables, folders and WebDataset shards, and the sample corpus.

* :mod:`cliplab.data.pairs`: tables and image folders (:func:`read_pairs`) and
  source classification (:func:`source_kind`);
* :mod:`cliplab.data.captions`: the caption rules, each named and counted: the trainer's
  (:func:`caption_rule`, :func:`filter_captions`) and the web path's (:class:`CaptionFilter`);
* :mod:`cliplab.data.shards`: WebDataset tar shards (:func:`expand_shards`,
  :func:`iter_shard`, :func:`pack_shards`);
* :mod:`cliplab.data.loader`: the datasets (:class:`PairDataset`,
  :class:`ShardStream`) and the deterministic, resumable training loader
  (:func:`make_train_loader`); its docstring explains the ordering and resumption rules.

* :mod:`cliplab.data.corpus`: the offline sample corpus built from openly licensed art;
* :mod:`cliplab.data.web`: from web pages to training shards: extract image-caption pairs from
  HTML, WARC and WAT files, download them into shards, curate the shards.

The trainer (:mod:`cliplab.train`) reads its data through this package; nothing here imports the
trainer. The public names of captions, pairs, shards and loader are re-exported here, imported on first
use (PEP 562), so that reading the caption rules (the command line's parser does) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "SKIP_REASONS": ".loader",
    "DataSpec": ".loader",
    "PairDataset": ".loader",
    "ShardStream": ".loader",
    "TrainLoader": ".loader",
    "make_train_loader": ".loader",
    "CAPTION_RULES": ".captions",
    "WEB_CAPTION_RULES": ".captions",
    "CaptionFilter": ".captions",
    "caption_rule": ".captions",
    "filter_captions": ".captions",
    "CAPTION_COLUMNS": ".pairs",
    "IMAGE_COLUMNS": ".pairs",
    "Pair": ".pairs",
    "read_pairs": ".pairs",
    "source_kind": ".pairs",
    "ShardSample": ".shards",
    "expand_shards": ".shards",
    "iter_shard": ".shards",
    "pack_shards": ".shards",
    "KeepList": ".keep",
    "read_keep_list": ".keep",
}

__all__ = [
    "CAPTION_COLUMNS",
    "CAPTION_RULES",
    "IMAGE_COLUMNS",
    "SKIP_REASONS",
    "WEB_CAPTION_RULES",
    "CaptionFilter",
    "DataSpec",
    "KeepList",
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
    "read_keep_list",
    "read_pairs",
    "source_kind",
]

if TYPE_CHECKING:
    from .captions import CAPTION_RULES, WEB_CAPTION_RULES, CaptionFilter, caption_rule, filter_captions
    from .keep import KeepList, read_keep_list
    from .loader import SKIP_REASONS, DataSpec, PairDataset, ShardStream, TrainLoader, make_train_loader
    from .pairs import CAPTION_COLUMNS, IMAGE_COLUMNS, Pair, read_pairs, source_kind
    from .shards import ShardSample, expand_shards, iter_shard, pack_shards

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
