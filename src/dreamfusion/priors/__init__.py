"""2D diffusion priors behind one Protocol, chosen by name; each has its own config dataclass.

Each prior lives in its own module. Optional heavy packages (diffusers, transformers) are imported only when
a prior that needs them loads, so importing this package is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from dreamfusion.priors.analytic import AnalyticPrior, AnalyticPriorConfig
from dreamfusion.priors.base import DiffusionPrior, PriorError, PromptEmbeddings
from dreamfusion.priors.deepfloyd_if import DeepFloydIFPrior, DeepFloydIFPriorConfig
from dreamfusion.priors.embedded import EmbeddedPrior, EmbeddedPriorConfig
from dreamfusion.priors.stable_diffusion import StableDiffusionPrior, StableDiffusionPriorConfig

PriorConfig = EmbeddedPriorConfig | AnalyticPriorConfig | StableDiffusionPriorConfig | DeepFloydIFPriorConfig
"""The run config's ``prior:`` section: the chosen prior's own config, told apart by its ``name``."""


@dataclass(frozen=True)
class PriorEntry:
    config: type
    prior: type
    description: str


PRIORS: dict[str, PriorEntry] = {
    "embedded": PriorEntry(EmbeddedPriorConfig, EmbeddedPrior, "small offline prior shipped with the package"),
    "analytic": PriorEntry(AnalyticPriorConfig, AnalyticPrior, "closed-form Gaussian prior for tests and debugging"),
    "sd": PriorEntry(StableDiffusionPriorConfig, StableDiffusionPrior, "Stable Diffusion 1.x / 2.x from a local diffusers folder"),
    "if": PriorEntry(DeepFloydIFPriorConfig, DeepFloydIFPrior, "DeepFloyd IF stage I from a local diffusers folder"),
}
PRIOR_NAMES: tuple[str, ...] = tuple(PRIORS)


def _entry(name: str) -> PriorEntry:
    if name not in PRIORS:
        raise PriorError(f"unknown prior {name!r}; choose one of: {', '.join(PRIOR_NAMES)}")
    return PRIORS[name]


def check_model(name: str, model: str | None) -> None:
    """PriorError when weights (``--model``) are named for a prior that has none."""
    if model is not None and "model" not in {f.name for f in fields(_entry(name).config)}:
        raise PriorError(f"the {name} prior has no weights; leave --model unset")


def prior_config(name: str, **options: Any) -> PriorConfig:
    """The config of the prior ``name`` with ``options`` set (strictly: unknown options fail)."""
    from dreamfusion.typed_config import from_dict

    return from_dict(_entry(name).config, {"name": name, **options}, "prior")


def build_prior(config: PriorConfig, device: torch.device) -> DiffusionPrior:
    """Load the prior ``config`` names on ``device``. Raises PriorError with a user-facing message."""
    return _entry(config.name).prior(config, device)


def check_prompt(config: PriorConfig, prompt: str) -> str:
    """The prompt as the prior will read it; PriorError, before anything loads, if it cannot read it."""
    return _entry(config.name).prior.check_prompt(prompt)


def describe_priors() -> str:
    return "; ".join(f"{name}: {entry.description}" for name, entry in PRIORS.items())


__all__ = ["PRIOR_NAMES", "DiffusionPrior", "PriorConfig", "PriorError", "PromptEmbeddings", "build_prior", "check_model", "check_prompt", "prior_config"]
