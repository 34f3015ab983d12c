"""Tiny random Stable Diffusion and DeepFloyd IF folders in the diffusers layout, built offline for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "red", "chair", "front", "side", "back", "overhead", "view", "blue", "ball", "bad", "blurry", ","]


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz,":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = []
    for word in WORDS:
        if len(word) < 2:
            continue
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=16)
    tokenizer.save_pretrained(folder)
    return len(vocab)


def make_tiny_sd(root: Path, prediction_type: str = "epsilon") -> Path:
    """unet/ vae/ text_encoder/ tokenizer/ scheduler/ with models of a few thousand parameters (latent 8x8)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vocab_size = _clip_tokenizer(root / "tokenizer")
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    text.save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=16, scaling_factor=0.18215,
    ).save_pretrained(root / "vae")
    DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type,
    ).save_pretrained(root / "scheduler")
    return root


def _t5_tokenizer(folder: Path):
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -float(i + 1)) for i, w in enumerate(WORDS)]
    pieces += [(ch, -20.0) for ch in "abcdefghijklmnopqrstuvwxyz,\u2581"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return len(pieces)


def make_tiny_if(root: Path) -> Path:
    """unet/ (6 output channels, 16x16) text_encoder/ (tiny T5) tokenizer/ scheduler/ (IF's cosine schedule)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    vocab_size = _t5_tokenizer(root / "tokenizer")
    T5EncoderModel(
        T5Config(vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1)
    ).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, encoder_hid_dim=16, attention_head_dim=2, norm_num_groups=4,
    ).save_pretrained(root / "unet")
    DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range", prediction_type="epsilon"
    ).save_pretrained(root / "scheduler")
    return root


def write_sentencepiece_tokenizer(folder: Path) -> None:
    """Replace a tiny IF folder's tokenizer with a trained sentencepiece ``spiece.model``, as IF ships it."""
    import shutil

    import sentencepiece

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    corpus = folder.parent / "corpus.txt"
    corpus.write_text("\n".join(["a red chair, front view", "a blue ball, side view", "a chair, back view", "overhead view"] * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=28, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    (folder / "spiece.vocab").unlink()
    corpus.unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "model_max_length": 77, "extra_ids": 0}))
