"""Many prompts, one run directory each, spread over the ranks of a torchrun job.

    torchrun --nproc_per_node N -m dreamfusion batch PROMPTS.txt --out DIR

Each rank optimizes its share of the prompts alone (one ``run.generate`` per prompt on its own device, no
gradient synchronization), into ``DIR/<index>-<slug>/``. A prompt that fails is recorded and the rank goes
on with the next. Every rank writes ``DIR/summary.rank<R>.json``; rank 0 gathers them into
``DIR/summary.json`` and prints the failures. Every prompt uses the base config's seed, so a prompt's result
does not depend on how many ranks ran the batch. Across nodes the same code runs under a multi-node torchrun
(RANK / WORLD_SIZE span the nodes); the summary is gathered through torch.distributed, the run
directories stay where each rank wrote them.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dreamfusion.config import RunConfig
from dreamfusion.distributed import (
    DistributedContext,
    broadcast_from_main,
    cleanup,
    gather_to_main,
    group_exists,
    init_distributed,
    resolve_device,
)  # fmt: skip
from dreamfusion.errors import DreamfusionError
from dreamfusion.files import write_text_atomic
from dreamfusion.run import RunError, generate, prompt_slug, validate_prompt
from dreamfusion.runlock import lock_run


@dataclass
class PromptResult:
    index: int
    """Position of the prompt among the file's prompts (blank lines and comments not counted)."""
    prompt: str
    run_dir: str
    rank: int
    ok: bool
    steps: int = 0
    seconds: float = 0.0
    error_type: str | None = None
    error: str | None = None
    """One line for the user; for an unexpected exception, ``traceback`` has the rest."""
    traceback: str | None = None


@dataclass
class BatchSummary:
    """The results of one rank (``run_batch`` on ranks > 0) or of the whole batch (on rank 0)."""

    total: int
    """Prompts in the file."""
    world_size: int
    results: list[PromptResult] = field(default_factory=list)

    @property
    def failed(self) -> list[PromptResult]:
        return [r for r in self.results if not r.ok]

    @property
    def succeeded(self) -> list[PromptResult]:
        return [r for r in self.results if r.ok]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def report(self) -> str:
        """Lines for the user: counts, then each failure and why."""
        lines = [f"{len(self.succeeded)} of {self.total} prompts done, {len(self.failed)} failed"]
        lines += [f"  failed {r.index} {r.prompt!r}: {r.error_type}: {r.error}" for r in self.failed]
        return "\n".join(lines)


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise RunError(f"cannot read the prompts file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise RunError(f"the prompts file {path} is not UTF-8 text; save it as UTF-8") from None
    prompts = [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise RunError(f"{path} holds no prompts; write one per line (lines starting with # are comments)")
    return prompts


def shard(prompts: list[str], rank: int, world_size: int) -> list[tuple[int, str]]:
    """Rank ``rank``'s (index, prompt) pairs, round-robin: every prompt goes to exactly one rank, and the
    ranks' shares differ by at most one prompt."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return [(index, prompt) for index, prompt in enumerate(prompts) if index % world_size == rank]


def run_dir_name(index: int, prompt: str, total: int) -> str:
    return f"{index:0{max(3, len(str(total - 1)))}d}-{prompt_slug(prompt)}"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_batch(
    prompts_file: Path,
    out_dir: Path,
    base_config: RunConfig,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    overwrite: bool = False,
) -> BatchSummary:
    """Generate this rank's share of the prompts into ``out_dir``; a failed prompt never stops the others.

    With ``world_size`` > 1 the torch.distributed process group must exist (torchrun +
    ``init_distributed``): rank 0 reads the prompts file and shares it, and gathers the summaries. Returns
    the whole batch's summary on rank 0, this rank's own elsewhere. ``device``: this rank's (default: the
    base config's).
    """
    context = DistributedContext(rank=rank, world_size=world_size, device=device or resolve_device(base_config.device))
    if context.distributed and not group_exists():
        raise RunError(f"a batch over {world_size} ranks needs torch.distributed; start it with torchrun")
    prompts, problem, lock = None, None, None
    if context.is_main:
        try:
            prompts = read_prompts(prompts_file)
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            lock = lock_run(Path(out_dir))  # one batch writes a folder at a time
        except RunError as error:
            problem = str(error)
        except OSError as error:
            problem = f"cannot write to {out_dir}: {error.strerror}; choose another --out"
    prompts, problem = broadcast_from_main(context, (prompts, problem))  # every rank stops on a bad file
    if problem is not None:
        raise RunError(problem)
    try:
        return _run_shard(prompts, Path(out_dir), base_config, context, overwrite)
    finally:
        if lock is not None:
            lock.release()


def _run_shard(
    prompts: list[str], out_dir: Path, base_config: RunConfig, context: DistributedContext, overwrite: bool
) -> BatchSummary:
    rank, world_size = context.rank, context.world_size
    own = BatchSummary(total=len(prompts), world_size=world_size)
    alone = DistributedContext.single(context.device)  # each prompt: one process, no gradient sync
    for index, prompt in shard(prompts, rank, world_size):
        own.results.append(_run_one(index, prompt, prompts, out_dir, base_config, alone, rank, overwrite))
    write_text_atomic(out_dir / f"summary.rank{rank}.json", own.to_json())

    gathered = gather_to_main(context, own.results)
    if gathered is None:
        return own
    merged = BatchSummary(total=len(prompts), world_size=world_size)
    merged.results = sorted((r for results in gathered for r in results), key=lambda r: r.index)
    write_text_atomic(out_dir / "summary.json", merged.to_json())
    _log(merged.report())
    return merged


def _run_one(
    index: int, prompt: str, prompts: list[str], out_dir: Path, base_config: RunConfig,
    context: DistributedContext, rank: int, overwrite: bool,
) -> PromptResult:  # fmt: skip
    run_dir = out_dir / run_dir_name(index, prompt, len(prompts))
    result = PromptResult(index=index, prompt=prompt, run_dir=str(run_dir), rank=rank, ok=False)
    started = time.perf_counter()
    try:
        config = replace(base_config, prompt=validate_prompt(prompt, base_config.prior))
        generated = generate(config, run_dir, overwrite=overwrite, context=context)
        result.ok, result.steps = True, generated.train.steps
    except DreamfusionError as error:
        result.error_type, result.error = type(error).__name__, str(error)
    except Exception as error:  # noqa: BLE001 - one broken prompt must not end the batch
        result.error_type = type(error).__name__
        result.error = (str(error).splitlines() or [""])[0]
        result.traceback = traceback.format_exc()
        if context.device.type == "cuda":
            torch.cuda.empty_cache()  # e.g. after an out-of-memory error, for the next prompt
    result.seconds = time.perf_counter() - started
    status = "done" if result.ok else f"failed: {result.error_type}: {result.error}"
    _log(f"[rank {rank}] {index + 1}/{len(prompts)} {prompt!r} {status} ({result.seconds:.0f} s)")
    return result


def run_batch_from_env(prompts_file: Path, out_dir: Path, base_config: RunConfig, overwrite: bool = False) -> BatchSummary:
    """``run_batch`` for this process of a torchrun job (or alone, without torchrun): what the CLI calls."""
    owns_group = not group_exists()
    context = init_distributed(base_config.device)
    try:
        return run_batch(prompts_file, out_dir, base_config, context.rank, context.world_size, context.device, overwrite)
    finally:
        if owns_group:
            cleanup(context)


__all__ = ["BatchSummary", "PromptResult", "read_prompts", "run_batch", "run_batch_from_env", "shard"]
