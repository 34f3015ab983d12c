"""What does the embedded prior draw? DDIM samples of every colour x object pair and view, read by the probe.

Usage: python bench/prior_quality.py OUT_JSON [--device cuda] [--per-pair 2] [--steps 50] [--guidance 4]
                                     [--prior PATH] [--probe PATH] [--batch-size 1040] [--pairs K]
       python bench/prior_quality.py /tmp/q.json --device cpu --per-pair 1 --steps 4 --pairs 1 --probe DIR  (smoke)

For each pair "a {colour} {object}" and each view suffix (", front view", ...) it draws ``--per-pair`` images
(guidance ``--guidance``, the sampling scale, not SDS's), classifies them with the probe and scores object,
colour and view accuracy separately on the pairs the prior was trained on and on the held-out pairs (its
compositional generalization). View accuracy is also given on the kinds whose views can be told apart
(probe.VIEW_SYMMETRIC_KINDS excluded): that is the number that says whether view prompts work. Prints a table
and one JSON line, and writes the JSON to OUT_JSON. ``--pairs K`` keeps the first K seen and K held-out pairs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dreamfusion.cameras import VIEW_LABELS
from dreamfusion.embedded.probe import identifiable_views, load_probe
from dreamfusion.evaluate import ProbeEvaluation
from dreamfusion.priors.embedded import SAMPLING_GUIDANCE_SCALE, EmbeddedPrior, EmbeddedPriorConfig
from dreamfusion.priors.sampling import ddim_sample
from dreamfusion.procedural.dataset import COLOUR_NAMES, allowed_pairs
from dreamfusion.procedural.objects import OBJECT_KINDS, caption


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_json", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--per-pair", type=int, default=2, help="images per pair and view")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=SAMPLING_GUIDANCE_SCALE)
    parser.add_argument("--prior", default=None, help="prior weights file or folder (default: shipped)")
    parser.add_argument("--probe", default=None, help="probe weights file or folder (default: shipped)")
    parser.add_argument("--batch-size", type=int, default=1040, help="images per DDIM batch")
    parser.add_argument("--pairs", type=int, default=None, help="keep the first K seen and K held-out pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    probe = load_probe(args.probe, device)
    prior = EmbeddedPrior(EmbeddedPriorConfig(model=args.prior), device)

    seen, held = list(allowed_pairs("exclude")), list(allowed_pairs("only"))
    if args.pairs is not None:
        seen, held = seen[: args.pairs], held[: args.pairs]
    pairs = seen + held
    # One row per image: pair index, view index; the embeddings of "a red chair, side view" and the empty caption.
    conditional, unconditional, labels = [], [], []
    for index, (o, c) in enumerate(pairs):
        cond, uncond = prior.encode_prompt(caption(COLOUR_NAMES[c], OBJECT_KINDS[o])).for_views(VIEW_LABELS)
        conditional.append(cond.repeat_interleave(args.per_pair, 0))
        unconditional.append(uncond.repeat_interleave(args.per_pair, 0))
        for v in range(len(VIEW_LABELS)):
            labels += [(o, c, v, index < len(seen))] * args.per_pair
    conditional, unconditional = torch.cat(conditional), torch.cat(unconditional)
    truth = torch.tensor(labels)

    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    images = []
    for first in range(0, len(labels), args.batch_size):
        part = slice(first, first + args.batch_size)
        count = conditional[part].shape[0]
        images.append(ddim_sample(prior, (conditional[part], unconditional[part]), count, steps=args.steps,
                                  guidance_scale=args.guidance, generator=generator).cpu())
        print(f"sampled {first + count}/{len(labels)} in {time.perf_counter() - start:.1f} s", flush=True)
    sample_s = time.perf_counter() - start
    prediction = probe.classify(torch.cat(images)).cpu()

    def scores(mask: torch.Tensor) -> dict | None:
        if not mask.any():
            return None
        part = prediction[mask]
        result = asdict(ProbeEvaluation.score(truth[mask, 0], truth[mask, 1], truth[mask, 2], part))
        identifiable = identifiable_views(truth[mask, 0])
        hits = (part.view_ids == truth[mask, 2])[identifiable]
        result["view_accuracy_identifiable"] = hits.float().mean().item() if hits.numel() else None
        return result

    groups = {"seen": truth[:, 3] == 1, "held_out": truth[:, 3] == 0, "all": torch.ones(len(truth), dtype=torch.bool)}
    results = {name: scores(mask) for name, mask in groups.items()}
    columns = {"count": "images", "object_accuracy": "object", "colour_accuracy": "colour",
               "object_colour_accuracy": "both", "view_accuracy": "view", "view_accuracy_identifiable": "view*",
               "janus_rate": "janus"}
    print(f"{'pairs':<9}" + "".join(f"{title:>8}" for title in columns.values()))
    for name, result in results.items():
        if result is not None:
            cells = [f"{result[c]:.3f}" if isinstance(result[c], float) else str(result[c]) for c in columns]
            print(f"{name:<9}" + "".join(f"{cell:>8}" for cell in cells))
    print("view*: kinds whose views can be told apart; janus: back views drawn as front views")
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "pairs_seen": len(seen), "pairs_held_out": len(held), "per_pair": args.per_pair, "steps": args.steps,
        "guidance": args.guidance, "images": len(labels), "sample_s": round(sample_s, 2), **results,
    }  # fmt: skip
    line = json.dumps(summary)
    print(line, flush=True)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(line + "\n")


if __name__ == "__main__":
    main()
