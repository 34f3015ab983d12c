"""What the diffusers-based priors (Stable Diffusion, DeepFloyd IF) share: lazy imports, finding local
weights without touching the network, dtype choice, the noise schedule, v -> epsilon, the text-embedding
cache, and the U-Net's epsilon prediction.

Nothing here imports diffusers or transformers at module import time: ``dreamfusion`` works without them,
and asking for "sd" or "if" without them gives one ``PriorError`` line saying what to install.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamfusion.cameras import VIEW_LABELS
from dreamfusion.priors.base import PriorError, PromptEmbeddings, view_prompts
from dreamfusion.priors.cuda_graph import GraphedForward

INSTALL_HINT = "pip install 'dreamfusion[diffusers]'"
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def import_diffusers() -> Any:
    """The diffusers module, or a one-line PriorError naming the install command."""
    try:
        import diffusers
    except ImportError as error:
        raise PriorError(f"this prior needs diffusers and transformers ({error.name or 'diffusers'} is missing): {INSTALL_HINT}") from None
    return diffusers


def import_transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise PriorError(f"this prior needs diffusers and transformers ({error.name or 'transformers'} is missing): {INSTALL_HINT}") from None
    return transformers


def choose_dtype(precision: str, device: torch.device, cuda_default: torch.dtype = torch.float16) -> torch.dtype:
    """"auto": ``cuda_default`` on CUDA, fp32 elsewhere. Half precision is refused on CPU (slow, and many
    CPU kernels lack it), so an explicit fp16/bf16 on CPU falls back to fp32."""
    if precision == "auto":
        return cuda_default if device.type == "cuda" else torch.float32
    if precision not in PRECISION_DTYPES:
        raise PriorError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
    dtype = PRECISION_DTYPES[precision]
    return dtype if device.type == "cuda" else torch.float32


def resolve_model_dir(model: str | None, *, prior: str, subfolders: Sequence[str], fetch_hint: str) -> Path:
    """The local diffusers folder for ``model``: a path, or a model id already in the Hugging Face cache.

    Never downloads (the cache is read with ``local_files_only``). Every failure is one PriorError line naming
    what was tried, what a usable folder holds, and how to fetch it on a connected machine.
    """
    expected = f"model_index.json or the subfolders {', '.join(s + '/' for s in subfolders)}"
    if not model:
        raise PriorError(
            f"--model is required for --prior {prior}: a local diffusers folder (with {expected}); fetch one with `{fetch_hint}`"
        )
    path = Path(model).expanduser()
    if not path.exists() and _looks_like_repo_id(model):
        cached = _cached_snapshot(model)
        if cached is None:
            raise PriorError(
                f"{model!r} is neither a folder nor a model in the local Hugging Face cache (nothing is downloaded); "
                f"fetch it on a connected machine with `{fetch_hint}` and pass --model DIR"
            )
        path = cached
    if not path.is_dir():
        raise PriorError(f"no model folder at {path}: --prior {prior} needs a diffusers folder with {expected}; fetch one with `{fetch_hint}`")
    missing = [name for name in subfolders if not (path / name).is_dir()]
    if missing:
        raise PriorError(
            f"{path} is not a complete diffusers folder for --prior {prior}: missing {', '.join(m + '/' for m in missing)} "
            f"(expected {expected}); fetch one with `{fetch_hint}`"
        )
    return path


def _looks_like_repo_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~", "/"))


def _cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss or bad id means: not available offline
        return None


def load_component(loader: Callable[..., Any], path: Path, subfolder: str, what: str, **kwargs: Any) -> Any:
    """``loader(path, subfolder=..., local_files_only=True, **kwargs)`` with failures as one PriorError line."""
    try:
        return loader(str(path), subfolder=subfolder, local_files_only=True, **kwargs)
    except Exception as error:  # noqa: BLE001 - corrupt or foreign files: tell the user which component
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PriorError(f"cannot load the {what} from {path / subfolder} ({type(error).__name__}: {first[:200]})") from None


def load_frozen(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Eval mode, no parameter gradients, on ``device`` in ``dtype``."""
    model.requires_grad_(False)
    model.eval()
    if any(p.dtype != dtype for p in model.parameters()):  # loaders were asked for ``dtype``; cast only if they kept fp32 parts
        model = model.to(dtype=dtype)
    return model.to(device=device)


def scheduler_alphas_cumprod(path: Path) -> tuple[Tensor, str]:
    """(alpha_bar_t as float32, prediction_type) from the folder's scheduler config via DDPMScheduler."""
    diffusers = import_diffusers()
    config = load_component(diffusers.DDPMScheduler.load_config, path, "scheduler", "noise scheduler config")
    scheduler = diffusers.DDPMScheduler.from_config(config)
    return scheduler.alphas_cumprod.float().clone(), str(scheduler.config.prediction_type)


def epsilon_from_output(
    output: Tensor, noisy: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, prediction_type: str
) -> Tensor:
    """The model's output as an epsilon prediction, in float32.

    v-prediction (SD 2.x 768): v = sqrt(a) eps - sqrt(1 - a) x0 and x_t = sqrt(a) x0 + sqrt(1 - a) eps give
    eps = sqrt(a) v + sqrt(1 - a) x_t.
    """
    output = output.float()
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        a = alphas_cumprod.to(output.device)[timesteps.to(output.device)][:, None, None, None]
        return a.sqrt() * output + (1.0 - a).sqrt() * noisy.float()
    raise PriorError(f"unsupported prediction_type {prediction_type!r} in the scheduler config (epsilon or v_prediction)")


class EmbeddingCache:
    """Text embeddings of every view-suffixed prompt and of the negative (or empty) prompt, computed once.

    ``embed(list_of_texts) -> Tensor[N, L, D]`` runs the text encoder; results are kept per text, so a second
    ``encode_prompt`` with the same prompt never needs the encoder again (which lets a prior free it).
    """

    def __init__(self, embed: Callable[[list[str]], Tensor]) -> None:
        self._embed = embed
        self._cache: dict[str, Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> list[Tensor]:
        missing = [text for text in dict.fromkeys(texts) if text not in self._cache]
        if missing:
            with torch.no_grad():
                embedded = self._embed(missing)
            for i, text in enumerate(missing):
                self._cache[text] = embedded[i : i + 1].detach()
        return [self._cache[text] for text in texts]

    def has(self, texts: Sequence[str]) -> bool:
        return all(text in self._cache for text in texts)

    def prompt_embeddings(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        views = view_prompts(prompt.strip())
        texts = [views[label] for label in VIEW_LABELS] + [negative_prompt.strip()]
        embedded = self(texts)
        return PromptEmbeddings(by_view=dict(zip(VIEW_LABELS, embedded[:-1], strict=True)), unconditional=embedded[-1])


def prompt_texts(prompt: str, negative_prompt: str = "") -> list[str]:
    views = view_prompts(prompt.strip())
    return [views[label] for label in VIEW_LABELS] + [negative_prompt.strip()]


class DiffusersPrior:
    """What the Stable Diffusion and IF priors do alike once their modules are loaded: cached prompt
    embeddings, freeing the text encoder, and the U-Net's epsilon prediction. Subclasses set ``config``,
    ``device``, ``dtype``, ``unet``, ``prediction_type``, ``_alphas_cumprod``, ``_embeddings``,
    ``_unet_forward`` and the text-encoder attributes (``_place``, ``_open_folder`` and
    ``_setup_unet_and_text`` set most of them)."""

    compile_backend = "inductor"
    """torch.compile backend of ``compile_unet`` / ``compile_vae``."""

    def _place(self, config: Any, device: torch.device | str) -> None:
        """Set ``config``, ``device`` and the weights' ``dtype`` (fp16 on CUDA unless ``config.precision`` says)."""
        self.config = config
        self.device = torch.device(device)
        self.dtype = choose_dtype(config.precision, self.device, torch.float16)

    def _open_folder(
        self, config: Any, device: torch.device | str, *, prior: str, subfolders: Sequence[str], fetch_hint: str
    ) -> Any:
        """Check that diffusers and transformers import, ``_place``, and find the model folder (``path``);
        returns the diffusers module to load the components with."""
        diffusers = import_diffusers()
        import_transformers()
        self._place(config, device)
        self.path: Path | None = resolve_model_dir(config.model, prior=prior, subfolders=subfolders, fetch_hint=fetch_hint)
        return diffusers

    def _setup_unet_and_text(self, unet: Any) -> None:
        """The frozen U-Net with its speed options, the guidance and Perp-Neg settings, and an empty prompt
        cache; ``config``, ``device`` and ``dtype`` must be set."""
        config = self.config
        self.unet = load_frozen(unet, self.device, self.dtype)
        if config.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.default_guidance_scale = config.guidance_scale
        self.sampling_guidance_scale = config.sampling_guidance_scale
        self.perp_neg = config.perp_neg
        self.perp_neg_weights = config.perp_neg_weights

        self._unet_forward: Any = self._plain_unet_forward
        if config.compile_unet:
            self._compiled_unet = torch.compile(self.unet, backend=self.compile_backend)
            self._unet_forward = self._compiled_forward
        if config.cuda_graph and self.device.type == "cuda":
            self._unet_forward = GraphedForward(self._unet_forward)

        self._text_encoder: Any = None
        self._tokenizer: Any = None
        self._embeddings = EmbeddingCache(self._embed_texts)

    def release_text_encoder(self) -> None:
        """Free the text encoder and tokenizer (cached embeddings stay; an uncached prompt reloads them)."""
        self._text_encoder = None
        self._tokenizer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        """Text-encoder hidden states (batch 1) of each view prompt and of the negative (empty) prompt."""
        embeddings = self._embeddings.prompt_embeddings(prompt, negative_prompt)
        if self.config.release_text_encoder:
            self.release_text_encoder()
        return embeddings

    @property
    def alphas_cumprod(self) -> Tensor:
        return self._alphas_cumprod

    def _plain_unet_forward(self, sample: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        return self.unet(sample, timesteps, encoder_hidden_states=context, return_dict=False)[0]

    def _compiled_forward(self, sample: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        return self._compiled_unet(sample, timesteps, encoder_hidden_states=context, return_dict=False)[0]

    def predict_noise(self, noisy: Tensor, timesteps: Tensor, embeddings: Tensor) -> Tensor:
        """Epsilon, in the dtype of ``noisy``: the first C output channels (IF's learned variance dropped),
        converted from v for v-prediction models."""
        timesteps = timesteps.to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            sample = noisy.to(self.device, self.dtype)
            if self.config.channels_last:
                sample = sample.contiguous(memory_format=torch.channels_last)
            out = self._unet_forward(sample, timesteps, embeddings.to(self.device, self.dtype))[:, : noisy.shape[1]]
            eps = epsilon_from_output(out, noisy, timesteps, self._alphas_cumprod, self.prediction_type)
        return eps.to(noisy.dtype)
