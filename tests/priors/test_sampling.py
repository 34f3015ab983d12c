import torch

from dreamfusion.embedded.schedule import cosine_alphas_cumprod
from dreamfusion.priors.base import PromptEmbeddings
from dreamfusion.priors.sampling import ddim_sample, ddim_timesteps


class PointPrior:
    """A 'model' of a one-image data set, with the exact epsilon: DDIM must land on that image."""

    name = "point"
    resolution = 8
    latent_shape = (3, 8, 8)
    default_guidance_scale = 1.0

    def __init__(self, target: torch.Tensor) -> None:
        self.target = target
        self.alphas_cumprod = cosine_alphas_cumprod(1000)

    def predict_noise(self, noisy, timesteps, embeddings):
        a = self.alphas_cumprod[timesteps][:, None, None, None]
        return (noisy - a.sqrt() * self.target) / (1 - a).sqrt() + 0.0 * embeddings[:, :1, None, None]

    def decode(self, latents):
        return (latents + 1) / 2


def test_ddim_timesteps_trailing() -> None:
    assert ddim_timesteps(1000, 4) == [999, 749, 499, 249]
    assert ddim_timesteps(1000, 1000)[-1] == 0


def test_ddim_lands_on_the_single_training_image() -> None:
    target = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prior = PointPrior(target)
    cond, uncond = torch.ones(1, 2), torch.zeros(1, 2)
    for eta, clip in ((0.0, None), (1.0, False)):
        images = ddim_sample(prior, (cond, uncond), num_images=2, steps=10, guidance_scale=3.0, eta=eta,
                             generator=torch.Generator().manual_seed(1), clip_denoised=clip)
        assert images.shape == (2, 3, 8, 8)
        torch.testing.assert_close(images, ((target + 1) / 2).expand(2, 3, 8, 8), atol=1e-3, rtol=0)
    embeddings = PromptEmbeddings(by_view={"side": cond}, unconditional=uncond)
    images = ddim_sample(prior, embeddings, num_images=1, steps=4, view="side")
    torch.testing.assert_close(images[0], (target + 1) / 2, atol=1e-3, rtol=0)
