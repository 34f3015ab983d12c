"""What the diffusers-based priors (Stable Diffusion, DeepFloyd IF) share: lazy imports, finding local
weights without touching the network, dtype choice, the noise schedule, v -> epsilon, the text-embedding
cache, and the U-Net's epsilon prediction.

Nothing here imports diffusers or transformers at module import time: ``dreamfusion`` works without them,
and asking for "sd" or "if" without them gives one ``PriorError`` line saying what to install.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from dreamfusion.cameras import VIEW_LABELS, view_prompts
from dreamfusion.diffusion import epsilon_from_v
from dreamfusion.priors.base import Precision, PriorError, PromptEmbeddings, choose_dtype
from dreamfusion.priors.cuda_graph import GraphedForward
from dreamfusion.sds import GuidanceMode

INSTALL_HINT = "pip install 'dreamfusion[diffusers]'"


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
        return epsilon_from_v(output, noisy, a)
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


@dataclass(frozen=True)
class DiffusersPriorConfig:
    """What the Stable Diffusion and IF priors are configured alike by."""

    name: str = ""
    model: str | None = None
    """A local diffusers folder, or a model id already in the local Hugging Face cache (nothing is downloaded)."""
    precision: Precision = "auto"
    """"auto": fp16 on CUDA (the published weights are fp16-safe), fp32 on CPU."""
    release_text_encoder: bool = True
    """Free the text encoder once the run's prompts are embedded (it is reloaded for an uncached prompt)."""
    cuda_graph: bool = True
    """Replay the U-Net forward from a CUDA graph (CUDA devices only): at batch 2 it is bound by kernel launches."""
    compile_unet: bool = False
    """torch.compile the U-Net (minutes of compiling first; pays on long runs)."""
    channels_last: bool = False
    """Channels-last memory layout for the U-Net (and SD's VAE)."""


class DiffusersPrior:
    """What the Stable Diffusion and IF priors do alike once their modules are loaded: the text encoder and
    its cached prompt embeddings, and the U-Net's epsilon prediction. Subclasses set ``unet``,
    ``prediction_type`` and ``_alphas_cumprod`` (``_place``, ``_open_folder`` and ``_setup_unet_and_text``
    set the rest), and say which text encoder they use."""

    compile_backend = "inductor"
    """torch.compile backend of ``compile_unet`` / ``compile_vae``."""
    default_guidance_mode: ClassVar[GuidanceMode] = "cfg"
    view_prompts = True
    text_encoder_class: ClassVar[str]
    """The transformers class of the text encoder."""
    text_encoder_label: ClassVar[str]
    """How error messages name the text encoder."""
    max_tokens: ClassVar[int | None] = None
    """Prompt length in tokens; None is the tokenizer's own maximum."""
    mask_padding: ClassVar[bool] = False
    """Pass the attention mask, for an encoder trained with its padding masked (T5)."""

    @staticmethod
    def check_prompt(prompt: str) -> str:
        """Any text reads; surrounding white space is dropped."""
        return prompt.strip()

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
        """The frozen U-Net with its speed options and an empty prompt cache; ``config``, ``device`` and
        ``dtype`` must be set."""
        config = self.config
        self.unet = load_frozen(unet, self.device, self.dtype)
        if config.channels_last:
            self.unet.to(memory_format=torch.channels_last)

        self._unet_forward: Any = self._plain_unet_forward
        if config.compile_unet:
            self._compiled_unet = torch.compile(self.unet, backend=self.compile_backend)
            self._unet_forward = self._compiled_forward
        if config.cuda_graph and self.device.type == "cuda":
            self._unet_forward = GraphedForward(self._unet_forward)

        self._text_encoder: Any = None
        self._tokenizer: Any = None
        self._embeddings = EmbeddingCache(self._embed_texts)

    def _load_text_encoder(self) -> None:
        if self.path is None:
            raise PriorError("this prior was built from components and its text encoder was released; embed prompts before releasing it")
        transformers = import_transformers()
        self._tokenizer = load_component(transformers.AutoTokenizer.from_pretrained, self.path, "tokenizer", "tokenizer")
        encoder_class = getattr(transformers, self.text_encoder_class)
        encoder = load_component(encoder_class.from_pretrained, self.path, "text_encoder", self.text_encoder_label, dtype=self.dtype)
        self._text_encoder = load_frozen(encoder, self.device, self.dtype)

    def _embed_texts(self, texts: list[str]) -> Tensor:
        """Hidden states of the text encoder's last layer for each text, padded to the prompt length."""
        if self._text_encoder is None:
            self._load_text_encoder()
        length = self.max_tokens or self._tokenizer.model_max_length
        tokens = self._tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device) if self.mask_padding else None
        with torch.autocast(self.device.type, enabled=False):
            hidden = self._text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return hidden.to(self.dtype)

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
