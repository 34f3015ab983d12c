"""2D diffusion priors behind one Protocol, chosen by name.

Each prior lives in its own module, imported only when chosen, so heavy dependencies (diffusers) are
needed only by the priors that use them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dreamfusion.priors.base import DiffusionPrior, PriorError, PromptEmbeddings

PriorName = Literal["embedded", "analytic", "sd", "if"]

# name -> (module, builder function, one-line description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "embedded": ("dreamfusion.priors.embedded", "build", "small offline prior shipped with the package"),
    "analytic": ("dreamfusion.priors.analytic", "build", "closed-form Gaussian prior for tests and debugging"),
    "sd": ("dreamfusion.priors.stable_diffusion", "build", "Stable Diffusion 1.x / 2.x from a local diffusers folder"),
    "if": ("dreamfusion.priors.deepfloyd_if", "build", "DeepFloyd IF stage I from a local diffusers folder"),
}
PRIOR_NAMES: tuple[str, ...] = tuple(_REGISTRY)


@dataclass(frozen=True)
class PriorConfig:
    """Which prior guides the run, and where its weights are."""

    name: PriorName = "embedded"
    model: str | None = None
    """Weights: a local folder (or, for "sd" / "if", a model id already in the local cache). None: the
    shipped weights for "embedded"; required for "sd" and "if"."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Dtype of the prior's weights; "auto" is fp32 on CPU and the prior's preference on CUDA."""
    perp_neg: bool | None = None
    """Perp-Neg guidance, the other views' prompts as negatives, against multi-face (Janus) objects and
    objects turned away from the front. None: the prior's own default (on for "embedded", off for "sd" and
    "if"); "analytic" has no view prompts."""
    vae_resolution: int | None = None
    """sd: side of the image the VAE encodes (None: the model's own, 512 for SD 1.5 / 2.1-base)."""
    cuda_graph: bool = True
    """On CUDA devices, replay the prior's U-Net forward from a captured CUDA graph (removes kernel-launch
    overhead, which dominates a U-Net forward at batch 2); ignored on CPU."""
    compile_unet: bool = False
    """sd / if: torch.compile the U-Net (slow first steps; pays on long runs)."""
    compile_vae: bool = False
    """sd: torch.compile the VAE encoder's forward and backward."""
    channels_last: bool = False
    """sd / if: channels-last memory layout for the U-Net."""

    def given(self, *names: str) -> dict[str, Any]:
        """The named options that are set (not None), for a prior's own config to take; unset ones keep its defaults."""
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def build_prior(config: PriorConfig, device: torch.device) -> DiffusionPrior:
    """Load the prior named in ``config`` on ``device``. Raises PriorError with a user-facing message."""
    module = _prior_module(config.name)
    if config.perp_neg and config.name not in ("embedded", "sd", "if"):
        raise PriorError(f"Perp-Neg guidance needs a prior with view prompts (embedded, sd, if), not {config.name!r}")
    _, builder, _ = _REGISTRY[config.name]
    return getattr(module, builder)(config, device)


def check_prompt(config: PriorConfig, prompt: str) -> None:
    """Refuse, before anything loads or runs, a prompt the prior cannot read: a prior module with a closed
    vocabulary defines ``check_prompt(prompt)`` (only "embedded" does; the others read any text)."""
    check = getattr(_prior_module(config.name), "check_prompt", None)
    if check is not None:
        check(prompt)


def _prior_module(name: str) -> Any:
    """The module of a registered prior (cheap: optional packages are imported only when a prior loads)."""
    if name not in _REGISTRY:
        raise PriorError(f"unknown prior {name!r}; choose one of: {', '.join(PRIOR_NAMES)}")
    try:
        return importlib.import_module(_REGISTRY[name][0])
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("dreamfusion"):
            raise PriorError(f"prior {name!r} is not available in this version of dreamfusion") from None
        raise PriorError(f"prior {name!r} needs the package {error.name!r}: pip install 'dreamfusion[diffusers]'") from None


def describe_priors() -> str:
    return "; ".join(f"{name}: {desc}" for name, (_, _, desc) in _REGISTRY.items())


__all__ = ["DiffusionPrior", "PriorConfig", "PriorError", "PromptEmbeddings", "build_prior", "PRIOR_NAMES"]
