"""Tiny towers from other libraries, written in the exact published formats: a timm state dict, and
Hugging Face folders (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) with tokenizers built by the ``tokenizers``
library. Random weights from fixed seeds; everything builds in well under a second."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from cliplab.model import CLIPConfig
from cliplab.model.towers import HeadConfig, HFTextConfig, TimmVisionConfig

TIMM_ARCH = "test_efficientnet"  # timm's 0.36 M-parameter EfficientNet for tests (BatchNorm, SE, 160 px)
WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "photo",
    "picture",
    "drawing",
    "cat",
    "dog",
    "red",
    "green",
    "blue",
    "apple",
    "hat",
    "rocket",
    "sky",
    "night",
    "small",
    "big",
    "two",
    "sitting",
    "table",
    "chair",
    "over",
    "sea",
    "stars",
    "moon",
    "car",
    "tree",
    "house",
    "bird",
    "flower",
]
CORPUS = [
    "a photo of a cat sitting on a red chair",
    "a drawing of two dogs and a blue car",
    "the rocket over the sea at night with stars",
    "a green apple on a small table",
    "an old house with a big tree",
]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def wordpiece_tokenizer():
    """A BERT-style WordPiece tokenizer (lower-casing, [CLS] text [SEP]) over a small vocabulary that
    still spells any ASCII word (single letters and ##letters)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = special + letters + [f"##{c}" for c in string.ascii_lowercase + string.digits] + WORDS
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(special)
    return tokenizer


def bytelevel_tokenizer():
    """A RoBERTa-style byte-level BPE (<s> text </s>, padding id 1) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4 + WORDS, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tokenizer


def write_text_tower(folder: Path, kind: str = "bert", seed: int = 0, hidden: int = 32, positions: int = 40) -> Path:
    """A Hugging Face text tower folder: ``kind`` ``bert`` (WordPiece, pad 0) or ``roberta`` (byte-level
    BPE, pad 1), 2 layers of width ``hidden``, random weights from ``seed`` (saved by transformers)."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        tokenizer = wordpiece_tokenizer()
        tokens = {
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
        config = transformers.BertConfig(
            vocab_size=tokenizer.get_vocab_size(),
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=positions,
            pad_token_id=0,
        )
    else:
        tokenizer = bytelevel_tokenizer()
        tokens = {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "cls_token": "<s>",
            "mask_token": "<mask>",
        }
        tokenizer_config = {"tokenizer_class": "RobertaTokenizer", "model_max_length": 512, "add_prefix_space": False}
        config = transformers.RobertaConfig(
            vocab_size=tokenizer.get_vocab_size(),
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=positions + 2,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", {**tokenizer_config, **tokens})
    _write_json(folder / "special_tokens_map.json", tokens)
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config)  # with the pooler: files on the hub carry one
    with torch.no_grad():  # features far from zero: randomised LayerNorm affine parameters
        for name, tensor in model.state_dict().items():
            if "LayerNorm.weight" in name:
                tensor.uniform_(0.5, 1.5)
            elif "LayerNorm.bias" in name:
                tensor.normal_(0, 0.1)
    model.save_pretrained(folder)
    return folder


def write_timm_weights(path: Path, arch: str = TIMM_ARCH, seed: int = 0) -> Path:
    """A timm state dict of ``arch`` with its classifier (as timm publishes them), random BatchNorm
    statistics so that features are far from zero."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def towers_config(
    root: Path,
    vision: str = "timm",
    text: str = "bert",
    pooling: str = "mean",
    image_head: str | HeadConfig = "mlp",
    text_head: str | HeadConfig = "linear",
    embed_dim: int = 24,
    context_length: int = 16,
) -> CLIPConfig:
    """A model config with the tiny towers written under ``root`` (``vision``: timm or native; ``text``:
    bert, roberta or native)."""
    from cliplab.model import TextConfig, VisionConfig

    if vision == "timm":
        weights = root / "timm.safetensors"
        if not weights.is_file():
            write_timm_weights(weights)
        vision_cfg = TimmVisionConfig(TIMM_ARCH, image_size=64, pretrained=str(weights), head=image_head)
    else:
        vision_cfg = VisionConfig(image_size=32, layers=2, width=64, patch_size=16, heads=2)
    if text in ("bert", "roberta"):
        folder = root / text
        if not (folder / "config.json").is_file():
            write_text_tower(folder, text)
        text_cfg = HFTextConfig(str(folder), pooling=pooling, context_length=context_length, head=text_head)
    else:
        text_cfg = TextConfig(context_length=context_length, width=64, heads=2, layers=2)
    return CLIPConfig(embed_dim=embed_dim, vision=vision_cfg, text=text_cfg, quick_gelu=False)
