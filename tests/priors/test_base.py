"""The prompt embeddings every prior hands to SDS: stacking per view, the textureless fallback, and moving
them to a device; PriorError as a user error; and the choice of a prior's weight dtype."""

from __future__ import annotations

import pytest
import torch

from dreamfusion.errors import DreamfusionError
from dreamfusion.priors.base import PriorError, PromptEmbeddings, choose_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def _embeddings(textureless: bool = False) -> PromptEmbeddings:
    """Embeddings of shape [1, 2, 3] whose every entry names its source: 1 front, 2 side, 3 back, 4 overhead,
    0 unconditional, and 10 more for the textureless ones."""
    views = ("front", "side", "back", "overhead")
    return PromptEmbeddings(
        by_view={label: torch.full((1, 2, 3), float(i + 1)) for i, label in enumerate(views)},
        unconditional=torch.zeros(1, 2, 3),
        textureless_by_view={label: torch.full((1, 2, 3), float(i + 11)) for i, label in enumerate(views)}
        if textureless
        else None,
    )


def test_for_views_stacks_the_views_in_order_beside_the_unconditional() -> None:
    conditional, unconditional = _embeddings().for_views(("back", "front", "back"))
    assert conditional.shape == unconditional.shape == (3, 2, 3)
    assert conditional[:, 0, 0].tolist() == [3.0, 1.0, 3.0]
    assert not unconditional.any()


def test_textureless_renders_use_their_own_embeddings_when_there_are_some() -> None:
    conditional, _ = _embeddings(textureless=True).for_views(("side", "overhead"), textureless=True)
    assert conditional[:, 0, 0].tolist() == [12.0, 14.0]
    plain, _ = _embeddings(textureless=True).for_views(("side",), textureless=False)
    assert plain[:, 0, 0].tolist() == [2.0]


def test_textureless_renders_fall_back_to_the_view_embeddings() -> None:
    embeddings = _embeddings(textureless=False)
    assert embeddings.views(textureless=True) is embeddings.by_view


def test_to_moves_every_tensor_and_keeps_the_missing_textureless_ones_missing() -> None:
    moved = _embeddings(textureless=True).to(torch.float64)  # a dtype stands in for a device: same code path
    assert all(t.dtype == torch.float64 for t in moved.by_view.values())
    assert moved.unconditional.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in moved.textureless_by_view.values())
    assert _embeddings(textureless=False).to("cpu").textureless_by_view is None


def test_prior_error_is_a_user_error_and_a_value_error() -> None:
    assert issubclass(PriorError, DreamfusionError) and issubclass(PriorError, ValueError)


# ----- choose_dtype -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [
        ("auto", CPU, torch.float32),
        ("auto", CUDA, torch.bfloat16),  # the caller's CUDA default
        ("fp32", CUDA, torch.float32),
        ("fp16", CUDA, torch.float16),
        ("bf16", CUDA, torch.bfloat16),
        ("fp16", CPU, torch.float32),  # half precision is refused on CPU
        ("bf16", CPU, torch.float32),
    ],
)
def test_choose_dtype(precision: str, device: torch.device, expected: torch.dtype) -> None:
    assert choose_dtype(precision, device, torch.bfloat16) is expected


def test_choose_dtype_names_the_choices_for_an_unknown_precision() -> None:
    with pytest.raises(PriorError, match=r"unknown precision 'fp8'; choose auto, fp32, fp16 or bf16"):
        choose_dtype("fp8", CPU, torch.float16)
