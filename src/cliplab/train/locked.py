"""Locked towers (LiT, Zhai et al. 2022; open_clip's ``--lock-image`` / ``--lock-text``): which
parameters learn and at which learning rate, and the fast path that trains on cached features.

* ``train.lock_image`` / ``train.lock_text`` freeze a tower; its projection head (for towers from
  other libraries) still learns, so both towers may be locked when they have heads.
* ``train.unlock_image_blocks`` / ``train.unlock_text_blocks`` = N leave the tower's last N blocks
  (and what follows them: final norms, pooling, projection) learning.
* ``train.image_lr`` / ``train.text_lr`` set a tower's own learning rate (0: ``train.lr``); heads and
  the temperature learn at ``train.lr``.

A fully locked tower computes the same features for the same input, so with ``train.feature_cache``
(the default) they are computed once (:mod:`cliplab.train.features`) and training reads them: only
the heads and the other tower run. Augmented images become ``data.views`` cached views per image
(view 0 plain), each step drawing one view per sample; the draws are a pure function of the seed
and the step, as the live loader's are, so a resumed run stays bitwise identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import AugmentConfig, Augmenter, augment_rng
from ..data.captions import filter_captions
from ..data.pairs import Pair, read_pairs, source_kind
from ..images import load_image
from ..model import CLIP
from .config import TrainConfig

__all__ = [
    "CachedBatches",
    "CachedContrastiveHead",
    "FeaturePlan",
    "apply_locks",
    "feature_plan",
    "lr_scale_of",
    "prepare_features",
    "set_train_mode",
    "tower_blocks",
]

TOWERS = ("image", "text")


def _is_image_param(name: str) -> bool:
    return name.startswith("visual.")


def _is_head_param(name: str) -> bool:
    return name.startswith(("visual.head.", "text.head."))


def _tower_of(name: str) -> str | None:
    if name in ("logit_scale", "logit_bias"):
        return None
    return "image" if _is_image_param(name) else "text"


def tower_blocks(model: CLIP, tower: str) -> tuple[list[nn.Module], list[nn.Module]]:
    """A tower's repeated blocks in order, and the modules after them (final norms, projections),
    which learn whenever any block is unlocked."""
    if tower == "image":
        visual = model.visual
        trunk = getattr(visual, "trunk", None)
        if trunk is not None:  # timm: stages in .blocks (EfficientNet, ConvNeXt: .stages), then head convs/norms
            name = "blocks" if hasattr(trunk, "blocks") else "stages" if hasattr(trunk, "stages") else None
            if name is None:
                raise ValueError(f"cannot find the blocks of the timm tower {type(trunk).__name__} to unlock")
            children = [n for n, _ in trunk.named_children()]
            after = [getattr(trunk, n) for n in children[children.index(name) + 1 :]]
            return list(getattr(trunk, name)), after
        if hasattr(visual, "transformer"):  # cliplab's ViT
            return list(visual.transformer.resblocks), [visual.ln_post]
        return [visual.layer1, visual.layer2, visual.layer3, visual.layer4], [visual.attnpool]
    if model.has_text_tower:
        transformer = model.text.transformer
        for path in ("encoder.layer", "encoder.layers", "layers", "h", "transformer.layer"):
            module: Any = transformer
            for part in path.split("."):
                module = getattr(module, part, None)
                if module is None:
                    break
            if isinstance(module, nn.ModuleList) and len(module):
                return list(module), []
        raise ValueError(f"cannot find the layers of the {type(transformer).__name__} text tower to unlock")
    return list(model.transformer.resblocks), [model.ln_final]


def apply_locks(model: CLIP, config: TrainConfig) -> dict[str, int]:
    """Freeze what the config locks; returns the trainable parameter count per tower and for heads."""
    t = config.train
    locked = {"image": t.lock_image, "text": t.lock_text}
    unlock = {"image": t.unlock_image_blocks, "text": t.unlock_text_blocks}
    for tower in TOWERS:
        if unlock[tower] and not locked[tower]:
            raise ValueError(f"train.unlock_{tower}_blocks needs train.lock_{tower} = true (it unlocks part of it)")
    for name, param in model.named_parameters():
        owner = _tower_of(name)
        if owner and locked[owner] and not _is_head_param(name):
            param.requires_grad_(False)
    for tower in TOWERS:
        if locked[tower] and unlock[tower]:
            blocks, after = tower_blocks(model, tower)
            if unlock[tower] > len(blocks):
                raise ValueError(
                    f"train.unlock_{tower}_blocks = {unlock[tower]} but the {tower} tower has {len(blocks)} blocks"
                )
            for module in blocks[-unlock[tower] :] + after:
                module.requires_grad_(True)
            if tower == "text" and not model.has_text_tower:
                model.text_projection.requires_grad_(True)
            if tower == "image" and hasattr(model.visual, "proj") and isinstance(model.visual.proj, nn.Parameter):
                model.visual.proj.requires_grad_(True)
    counts = {"image": 0, "text": 0, "heads": 0}
    for name, param in model.named_parameters():
        if param.requires_grad and _tower_of(name):
            counts["heads" if _is_head_param(name) else _tower_of(name) or "heads"] += param.numel()
    if not counts["image"] and not counts["text"] and not counts["heads"]:
        raise ValueError(
            "locking both towers leaves nothing to train: this model's towers have no projection heads. "
            "Unlock one tower, or unlock its last blocks (train.unlock_image_blocks / unlock_text_blocks)"
        )
    return counts


def lr_scale_of(config: TrainConfig) -> Callable[[str], float]:
    """Each parameter's learning rate as a multiple of ``train.lr`` (a tower's own rate; heads 1)."""
    t = config.train
    scales = {tower: own / t.lr if own and t.lr else 1.0 for tower, own in (("image", t.image_lr), ("text", t.text_lr))}

    def scale(name: str) -> float:
        tower = _tower_of(name)
        return 1.0 if tower is None or _is_head_param(name) else scales[tower]

    return scale


def _heads(model: CLIP) -> list[nn.Module]:
    text_head = model.text.head if model.has_text_tower else None
    return [m for m in (getattr(model.visual, "head", None), text_head) if m is not None]


def set_train_mode(model: CLIP, config: TrainConfig) -> None:
    """Train mode, except a locked tower's trunk, which stays in eval mode (BatchNorm statistics and
    dropout fixed, as LiT does) even where its last blocks are unlocked; its head trains."""
    model.train()
    if config.train.lock_image:
        model.visual.eval()
    if config.train.lock_text:
        if model.has_text_tower:
            model.text.eval()
        else:
            model.transformer.eval()
    for head in _heads(model):
        head.train()


# --------------------------------------------------------------------------- cached features


@dataclass
class FeaturePlan:
    """Which towers train on cached features (``image``, ``text``), and why the others do not."""

    image: bool
    text: bool
    notes: list[str]

    @property
    def any(self) -> bool:
        return self.image or self.text


def _fully_locked(config: TrainConfig, tower: str) -> bool:
    t = config.train
    return (
        (t.lock_image and not t.unlock_image_blocks) if tower == "image" else (t.lock_text and not t.unlock_text_blocks)
    )


def feature_plan(config: TrainConfig) -> FeaturePlan:
    """Which fully locked towers can read cached features in this run."""
    wanted = {tower: _fully_locked(config, tower) for tower in TOWERS}
    notes: list[str] = []
    if not any(wanted.values()) or not config.train.feature_cache:
        return FeaturePlan(False, False, notes)
    reasons = []
    kinds = {source_kind(config.resolve(str(src))) for src, _ in config.data.train}
    if "shards" in kinds:
        reasons.append("the data are shards (the cache covers tables and folders)")
    if config.data.resample:
        reasons.append("data.resample is on (the cache covers epochs without replacement)")
    if config.data.keep:
        reasons.append("a keep-list is set (it applies to shards)")
    if reasons:
        notes.append("locked towers run live, without the feature cache: " + "; ".join(reasons))
        return FeaturePlan(False, False, notes)
    return FeaturePlan(wanted["image"], wanted["text"], notes)


def read_training_pairs(config: TrainConfig) -> list[Pair]:
    """Every pair of the (table or folder) sources, after the caption filter, in source order."""
    pairs: list[Pair] = []
    for src, _ in config.data.train:
        path = config.resolve(str(src))
        found = read_pairs(path)
        if config.data.caption_filter:
            found, _ = filter_captions(found)
        if not found:
            raise ValueError(f"data source {path!r} has no usable pairs")
        pairs.extend(found)
    return pairs


def _views(config: TrainConfig) -> int:
    return config.data.views if config.data.augment else 1


def augment_config(config: TrainConfig) -> AugmentConfig | None:
    return AugmentConfig.from_dict(config.data.augment_options) if config.data.augment else None


def prepare_features(
    config: TrainConfig,
    model: CLIP,
    preprocess: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    plan: FeaturePlan,
    device: torch.device,
    cache_root: str,
    progress: bool = True,
) -> tuple[list[np.ndarray] | None, np.ndarray | None]:
    """The cached features of the towers ``plan`` names: image features per view, text features;
    computed where the cache lacks them."""
    from ..model.towers.fingerprint import tower_fingerprint
    from .features import FeatureCache, content_hash, image_features, text_features, view_key

    precision = config.train.precision
    use_bf16 = precision == "bf16"

    def run(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def encode(inputs: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                return fn(inputs.to(device))

        return encode

    captions = [p.caption for p in pairs]
    image_views = text = None
    was_training = model.training
    model.eval()
    if plan.image:
        images = [str(p.image) for p in pairs]
        fingerprint = tower_fingerprint(model, "vision", preprocess.config.to_dict())
        hashes = [content_hash(p) for p in images]
        augment = augment_config(config)
        image_views = []
        for view in range(_views(config)):
            cache = FeatureCache(cache_root, fingerprint, view_key(view, augment, config.train.seed, precision))
            image_views.append(
                image_features(
                    run(_image_trunk(model)),
                    preprocess,
                    images,
                    captions,
                    cache,
                    view=view,
                    augment=augment,
                    seed=config.train.seed,
                    progress=progress,
                    hashes=hashes,
                )
            )
    if plan.text:
        fingerprint = tower_fingerprint(model, "text")
        cache = FeatureCache(cache_root, fingerprint, f"text-{precision}")
        text = text_features(run(_text_trunk(model)), tokenizer, captions, cache, progress=progress)
    model.train(was_training)
    return image_views, text


def _image_trunk(model: CLIP) -> Callable[[torch.Tensor], torch.Tensor]:
    """A locked image tower up to its head (cliplab's own towers: the whole tower)."""
    return model.visual.features if hasattr(model.visual, "head") else model.encode_image


def _text_trunk(model: CLIP) -> Callable[[torch.Tensor], torch.Tensor]:
    return model.text.features if model.has_text_tower else model.encode_text


def _image_head(model: CLIP) -> nn.Module:
    return model.visual.head if hasattr(model.visual, "head") else nn.Identity()


def _text_head(model: CLIP) -> nn.Module:
    return model.text.head if model.has_text_tower else nn.Identity()


class CachedContrastiveHead(nn.Module):
    """:class:`~cliplab.train.step.ContrastiveHead` for batches in which a cached tower's input is its
    features: that tower's head alone runs on them; the other tower runs whole."""

    def __init__(self, clip: CLIP, plan: FeaturePlan) -> None:
        super().__init__()
        self.clip, self.plan = clip, plan

    def forward(self, image_input: torch.Tensor, text_input: torch.Tensor):
        clip = self.clip
        image = _image_head(clip)(image_input) if self.plan.image else clip.encode_image(image_input)
        text = _text_head(clip)(text_input) if self.plan.text else clip.encode_text(text_input)
        return F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1), clip.logit_scale.exp()


class CachedBatches:
    """The training batches of a run on cached features: batch ``k`` holds the samples at stream
    positions ``(k * world_size + rank) * B ...``; position ``q`` is sample ``perm_e[q mod N]`` of epoch
    ``e = q div N`` (a seeded permutation per epoch) in view ``rng(seed, q)`` of the cached ones. A tower
    not cached gets its input live: the image loaded (and augmented, keyed by the position), the
    caption tokenised. Everything is a pure function of the seed and ``k``."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        image_views: list[np.ndarray] | None,
        text: np.ndarray | None,
        preprocess: Any,
        tokenizer: Any,
        batch_size: int,
        seed: int,
        augment: AugmentConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        self.pairs, self.preprocess, self.tokenizer = list(pairs), preprocess, tokenizer
        # [views, N, features]: one gather per batch
        self.image_views = torch.from_numpy(np.stack(image_views)) if image_views is not None else None
        self.text = torch.from_numpy(text) if text is not None else None
        self.batch_size, self.seed = batch_size, seed
        self.augment = Augmenter(augment, seed, rank) if augment is not None else None  # the live loader's
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self._epoch: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, augment_rng(self.seed, "order", epoch).permutation(len(self.pairs)))
        return self._epoch[1]

    def indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample indices of batch ``k`` and their stream positions."""
        n, size = len(self.pairs), self.batch_size
        first = (k * self.world_size + self.rank) * size
        positions = np.arange(first, first + size)
        out = np.empty(size, dtype=np.int64)
        for epoch in np.unique(positions // n):
            chosen = positions // n == epoch
            out[chosen] = self._permutation(int(epoch))[positions[chosen] % n]
        return out, positions

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, positions = self.indices(k)
        if self.image_views is not None:
            count = self.image_views.shape[0]
            views = augment_rng(self.seed, "views", k, self.rank).integers(0, count, len(idx)) if count > 1 else 0
            images = self.image_views[torch.as_tensor(views), torch.from_numpy(idx)]
        else:
            pictures = []
            for i, q in zip(idx.tolist(), positions.tolist()):
                picture = load_image(self.pairs[i].image)
                if self.augment is not None:
                    picture = self.augment(picture, self.pairs[i].caption, q)
                pictures.append(picture)
            images = self.preprocess.batch(pictures)
        if self.text is not None:
            texts = self.text[idx]
        else:
            texts = self.tokenizer([self.pairs[i].caption for i in idx.tolist()])
        return images, texts

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1
