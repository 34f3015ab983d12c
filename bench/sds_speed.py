"""Speed of one SDS step with a full-size Stable Diffusion prior: naive fp32 eager vs the optimized prior.

Usage: python bench/sds_speed.py OUT_JSON [--model sd21|sd15] [--steps N] [--no-cuda-graphs] [--compile] [--compile-vae]
       [--compile-field] [--channels-last] [--profile TABLE.txt]
       python bench/sds_speed.py /tmp/sds.json --tiny          (CPU smoke test: tiny configs, 2 steps)

The U-Net, VAE and text encoder of SD 2.1-base (or SD 1.5) are built from their published configs with
random weights (speed does not depend on the values; nothing is downloaded), wrapped in the package's
``StableDiffusionPrior``, and driven by the package's ``Trainer`` (64x64 NeRF render, batch 1, CFG at
guidance 100, the VAE encoder at 512 with gradients, Adam step). Both loops run in the same process:

* naive: fp32 weights, trainer autocast off, eager U-Net, cuDNN's default algorithm choice;
* optimized: the prior's defaults on CUDA: fp16 weights (the prior runs in its own dtype, autocast off inside
  it), SDPA attention, the U-Net forward replayed as a CUDA graph (``--no-cuda-graphs`` turns that off), cuDNN
  autotuning; optionally ``--compile`` (torch.compile of the U-Net), ``--compile-vae`` (of the VAE encoder),
  ``--compile-field`` (of the NeRF field, ``trainer.compile_field``) and ``--channels-last``.

Printed: it/s of whole trainer steps; ms of the render (forward; and forward + backward with shading, so with
normals), the VAE encode forward + backward, and the
U-Net forward (batch 2, CFG); peak memory; FLOPs per step (torch.utils.flop_counter, counted on an eager
step) and achieved TFLOP/s. A table, then one JSON line (also written to OUT_JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from profiling import write_profile  # bench/profiling.py, beside this script

from dreamfusion.config import build_config
from dreamfusion.priors.stable_diffusion import StableDiffusionPrior, StableDiffusionPriorConfig
from dreamfusion.trainer import StepViews, Trainer

# Published architecture configs (diffusers layout) of the models the bench imitates.
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
)
SD15_UNET = {**SD21_BASE_UNET, "attention_head_dim": 8, "cross_attention_dim": 768, "use_linear_projection": False}
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
OPENCLIP_H_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                       hidden_act="gelu", projection_dim=1024)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   hidden_act="quick_gelu", projection_dim=768)
TEXT_COMMON = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
    sample_size=16, scaling_factor=0.18215,
)
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 vocab_size=64, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
TINY_RUN = {
    "camera": {"resolution": 16},
    "field": {"encoding": {"levels": 4, "log2_table_size": 12, "base_resolution": 8, "max_resolution": 64}, "hidden": 16},
    "renderer": {"num_samples": 16},
}


def _character_tokenizer(folder: Path, max_length: int) -> Any:
    """A CLIP BPE tokenizer over single characters (ids stay inside any vocabulary); speed does not depend on it."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz,":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=max_length)


def build_components(model: str, tiny: bool, work: Path) -> dict[str, Any]:
    """Random-weight U-Net, VAE, text encoder, DDPM scheduler and a tokenizer, in fp32 on the CPU."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if tiny:
        unet_cfg, vae_cfg, text_cfg = TINY_UNET, TINY_VAE, TINY_TEXT
    else:
        unet_cfg = SD21_BASE_UNET if model == "sd21" else SD15_UNET
        vae_cfg = SD_VAE
        text_cfg = {**(OPENCLIP_H_TEXT if model == "sd21" else CLIP_L_TEXT), **TEXT_COMMON}
    return dict(
        unet=UNet2DConditionModel(**unet_cfg),
        vae=AutoencoderKL(**vae_cfg),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
        scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000),
        tokenizer=_character_tokenizer(work / "tokenizer", 77),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats * 1e3


def measure(label: str, prior: StableDiffusionPrior, run_overrides: dict[str, Any], device: torch.device,
            steps: int, warmup: int, count_flops: bool, profile_path: Path | None = None) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    config = build_config("default", overrides={"prompt": "a red chair", "device": device.type, **run_overrides})
    trainer = Trainer(config, prior, device)  # embeds the prompts (then the prior frees its text encoder)
    for _ in range(warmup):
        trainer.train_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    # Parts of the step, each timed alone.
    from dreamfusion.cameras import sample_cameras

    cameras = sample_cameras(config.camera, 1, torch.Generator().manual_seed(0)).to(device)
    repeats = max(1, min(steps, 10))
    autocast = trainer._autocast

    def render_forward() -> torch.Tensor:  # the parts render as a training step does (from CUDA graphs where it does)
        with torch.no_grad():
            return trainer.render_views(StepViews(cameras, "albedo"), with_normals=False).rgb

    def render_forward_backward() -> None:
        with trainer.matmul_precision():
            trainer.render_views(StepViews(cameras, "lambertian"), with_normals=True).rgb.sum().backward()

    rgb = render_forward().permute(0, 3, 1, 2)
    rgb = torch.nn.functional.interpolate(rgb, size=(prior.resolution,) * 2, mode="bilinear").detach()

    def vae_forward_backward() -> None:
        leaf = rgb.clone().requires_grad_(True)
        with autocast():
            latents = prior.encode_images(leaf)
        latents.backward(torch.ones_like(latents))

    with torch.no_grad():
        latents = prior.encode_images(rgb)
    context = torch.cat(trainer.guidance.embeddings.for_views(("front",)))
    timesteps = torch.full((2,), 500, device=device, dtype=torch.long)

    def unet_forward() -> None:
        with autocast():
            prior.predict_noise(torch.cat((latents, latents)), timesteps, context)

    result = {
        "loop": label,
        "it_per_s": 1.0 / seconds,
        "step_ms": seconds * 1e3,
        "render_ms": _ms(render_forward, device, repeats),
        "render_shaded_fwd_bwd_ms": _ms(render_forward_backward, device, repeats),
        "vae_encode_fwd_bwd_ms": _ms(vae_forward_backward, device, repeats),
        "unet_ms": _ms(unet_forward, device, repeats),
        "peak_memory_gb": peak_gb,
        "dtype": str(prior.dtype).replace("torch.", ""),
    }
    if profile_path is not None:
        result.update(write_profile(trainer.train_step, device, profile_path, repeats))
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            trainer.train_step()
        result["flops_per_step"] = counter.get_total_flops()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_json", type=Path)
    parser.add_argument("--model", choices=("sd21", "sd15"), default="sd21")
    parser.add_argument("--steps", type=int, default=30, help="timed trainer steps per loop (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net in the optimized loop")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", help="eager U-Net in the optimized loop")
    parser.add_argument("--compile-vae", action="store_true", help="torch.compile the VAE encoder in the optimized loop")
    parser.add_argument("--compile-field", action="store_true", help="trainer.compile_field in the optimized loop")
    parser.add_argument("--channels-last", action="store_true", help="channels_last U-Net and VAE in the optimized loop")
    parser.add_argument("--precision", choices=("fp16", "bf16"), default="fp16", help="weights of the optimized loop")
    parser.add_argument("--tiny", action="store_true", help="tiny configs, 2 steps: a CPU smoke test")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--profile", type=Path, help="write a per-operator kernel-time table of the optimized loop here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps, warmup = (2, 1) if args.tiny else (args.steps, args.warmup)
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="sds_speed_"))
    run_overrides: dict[str, Any] = TINY_RUN if args.tiny else {}
    common = dict(resolution=16 if args.tiny else 64)

    components = build_components(args.model, args.tiny, work)  # shared: the optimized prior recasts them in place
    loops = []
    if not args.skip_naive:
        torch.backends.cudnn.benchmark = False
        config = StableDiffusionPriorConfig(precision="fp32", cuda_graph=False, **common)
        prior = StableDiffusionPrior.from_components(config, device, **components)
        loops.append(measure("naive fp32 eager", prior, {**run_overrides, "trainer": {"mixed_precision": "off"}},
                             device, steps, warmup, count_flops=True))
        del prior
    torch.backends.cudnn.benchmark = device.type == "cuda"
    fast = StableDiffusionPriorConfig(
        precision=args.precision, channels_last=args.channels_last, cuda_graph=args.cuda_graphs, compile_unet=args.compile,
        compile_vae=args.compile_vae, **common
    )
    prior = StableDiffusionPrior.from_components(fast, device, **components)
    parts = [str(prior.dtype).replace("torch.", ""), "channels_last" if fast.channels_last else "", "cuda-graph" if args.cuda_graphs and device.type == "cuda" else "",
             "compile" if args.compile else "", "compiled-vae" if args.compile_vae else ""]
    if args.compile_field:
        parts.append("compiled-field")
        run_overrides = {**run_overrides, "trainer": {"compile_field": True}}
    loops.append(measure("optimized " + "+".join(p for p in parts if p), prior, run_overrides, device, steps, warmup,
                         count_flops=False, profile_path=args.profile))
    # Counted on the eager naive step only: compiled regions and graph replays hide their operators from the counter.
    flops = loops[0].get("flops_per_step")  # None with --skip-naive
    for loop in loops:
        loop["flops_per_step"] = flops
        loop["tflops_per_s"] = None if flops is None else flops * loop["it_per_s"] / 1e12
    speedup = loops[-1]["it_per_s"] / loops[0]["it_per_s"] if len(loops) == 2 else None

    header = f"{'loop':<44} {'it/s':>7} {'step ms':>8} {'render':>7} {'rnd f+b':>8} {'vae f+b':>8} {'unet':>7} {'peak GB':>8} {'TFLOP/s':>8}"
    print(f"SDS step, {args.model}{' (tiny)' if args.tiny else ''}, {device}, batch 1, CFG; FLOPs/step {'n/a' if flops is None else f'{flops / 1e9:.3f} G'}")
    print(header)
    for r in loops:
        print(f"{r['loop']:<44} {r['it_per_s']:7.2f} {r['step_ms']:8.1f} {r['render_ms']:7.1f} {r['render_shaded_fwd_bwd_ms']:8.1f} {r['vae_encode_fwd_bwd_ms']:8.1f} "
              f"{r['unet_ms']:7.1f} {r['peak_memory_gb'] or float('nan'):8.2f} {r['tflops_per_s'] or float('nan'):8.2f}")
    for r in loops:
        if "kernel_ms" in r:
            print(f"profiled {r['loop']}: {r['profiled_wall_ms']:.1f} ms per step, of which GPU kernels {r['kernel_ms']:.1f} ms")
    if speedup is not None:
        print(f"speed-up optimized / naive: {speedup:.2f}x")
    summary = {
        "bench": "sds_speed", "model": args.model, "tiny": args.tiny, "device": str(device),
        "torch": torch.__version__, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loops": loops, "speedup": speedup,
        "targets": {"it_per_s": 33, "speedup": 3, "peak_memory_gb": 8},
    }
    line = json.dumps(summary)
    print(line)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(line + "\n")


if __name__ == "__main__":
    main()
