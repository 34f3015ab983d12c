"""The CUDA-graph replay of a prior's U-Net forward matches eager calls (needs a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from dreamfusion.priors.cuda_graph import GraphedForward
from dreamfusion.priors.embedded import EmbeddedPrior, EmbeddedPriorConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_replay_matches_eager_for_new_inputs_and_shapes() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 3, 3, padding=1).cuda()

    def forward(sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return layer(sample) * timesteps[:, None, None, None] + context.mean()

    graphed = GraphedForward(forward)
    for batch in (2, 2, 4):
        sample = torch.randn(batch, 3, 8, 8, device="cuda")
        timesteps = torch.rand(batch, device="cuda")
        context = torch.randn(batch, 5, device="cuda")
        with torch.no_grad():
            assert torch.allclose(graphed(sample, timesteps, context), forward(sample, timesteps, context), atol=1e-6)
    assert len(graphed._graphs) == 2  # one capture per shape


def test_embedded_prior_graph_matches_eager() -> None:
    eager = EmbeddedPrior(EmbeddedPriorConfig(cuda_graph=False), "cuda")
    graphed = EmbeddedPrior(EmbeddedPriorConfig(cuda_graph=True), "cuda")
    embeddings = eager.encode_prompt("a red chair")
    context = torch.cat((embeddings.by_view["front"], embeddings.unconditional))
    generator = torch.Generator(device="cuda").manual_seed(0)
    for t in (100, 700):
        noisy = torch.randn(2, 3, 64, 64, device="cuda", generator=generator)
        timesteps = torch.full((2,), t, device="cuda")
        expected = eager.predict_noise(noisy, timesteps, context)
        assert torch.allclose(graphed.predict_noise(noisy, timesteps, context), expected, atol=1e-4)
