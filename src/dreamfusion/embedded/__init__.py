"""The embedded prior: a small text-conditioned 64x64 pixel diffusion model that ships with the package.

vocabulary.py (closed-domain tokenizer), text_encoder.py and unet.py (the networks), schedule.py (cosine
schedule, v-prediction), model.py (the bundle and its safetensors format), train.py (training on procedural
renders). probe.py trains a classifier of the same renders; both loops take their batches from render_pool.py
and their time and step budget from budget.py. The DiffusionPrior adapter lives in dreamfusion/priors/embedded.py.
"""

from dreamfusion.embedded.model import EmbeddedDiffusion, EmbeddedModelConfig, load_weights, save_weights
from dreamfusion.embedded.vocabulary import normalize_prompt, tokenize

__all__ = ["EmbeddedDiffusion", "EmbeddedModelConfig", "load_weights", "normalize_prompt", "save_weights", "tokenize"]
