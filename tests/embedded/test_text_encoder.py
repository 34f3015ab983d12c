"""The embedded prior's text encoder on a tiny model: output shape, normalized slots, that every slot sees the
whole caption, determinism, and where gradients go."""

from __future__ import annotations

import torch

from dreamfusion.embedded.text_encoder import TextEncoder

VOCAB, MAX_TOKENS, DIM = 10, 6, 8


def _encoder(seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(VOCAB, MAX_TOKENS, DIM, layers=2, heads=2)


TOKENS = torch.tensor([[1, 4, 5, 2, 0, 0], [1, 7, 3, 2, 0, 0]])


def test_output_is_one_vector_per_slot() -> None:
    encoder = _encoder()
    assert encoder(TOKENS).shape == (2, MAX_TOKENS, DIM)
    assert encoder(TOKENS[:, :4]).shape == (2, 4, DIM)  # shorter captions use the first slots' positions


def test_the_final_layer_norm_gives_zero_mean_unit_variance_slots() -> None:
    out = _encoder()(TOKENS)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, MAX_TOKENS), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, MAX_TOKENS), atol=1e-3, rtol=0)


def test_every_slot_sees_the_whole_caption() -> None:
    """Changing the word in slot 2 changes slot 0 (<bos>, which the U-Net pools) and slot 5 too."""
    encoder = _encoder()
    changed = TOKENS.clone()
    changed[:, 2] = 9
    difference = (encoder(changed) - encoder(TOKENS)).abs().amax(-1)
    assert (difference[:, 0] > 1e-4).all() and (difference[:, 5] > 1e-4).all()


def test_the_same_slot_token_at_another_position_encodes_differently() -> None:
    """Learned position embeddings: the same token repeated in every slot is not the same vector everywhere."""
    out = _encoder()(torch.full((1, MAX_TOKENS), 3))
    assert (out[0, 0] - out[0, 3]).abs().max() > 1e-3


def test_same_seed_same_encoding_and_no_dropout_in_training_mode() -> None:
    first, again = _encoder(0), _encoder(0)
    assert torch.equal(first(TOKENS), again(TOKENS))
    first.train()
    again.eval()
    assert torch.equal(first(TOKENS), again(TOKENS))


def test_gradients_reach_only_the_tokens_used() -> None:
    encoder = _encoder()
    encoder(TOKENS).square().sum().backward()
    grad = encoder.token.weight.grad
    used = torch.zeros(VOCAB, dtype=torch.bool)
    used[TOKENS.unique()] = True
    assert (grad[used].abs().sum(-1) > 0).all()
    assert not grad[~used].any()
    assert encoder.position.grad is not None and encoder.position.grad.abs().sum() > 0
