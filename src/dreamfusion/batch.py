"""Many prompts, one run directory each, spread over the ranks of a torchrun job.

    torchrun --nproc_per_node N -m dreamfusion batch PROMPTS.txt --out DIR

Each rank optimizes its share of the prompts alone (one ``run.generate`` per prompt on its own device, no
gradient synchronization), into ``DIR/<index>-<slug>/``. A prompt that fails is recorded and the rank goes
on with the next. Every rank writes ``DIR/summary.rank<R>.json``; rank 0 gathers them into
``DIR/summary.json`` and prints the failures. Every prompt uses the base config's seed, so a prompt's result
does not depend on how many ranks ran the batch. Across nodes the same code runs under a multi-node torchrun
(RANK / WORLD_SIZE span the nodes); the summary is gathered through torch.distributed, the run
directories stay where each rank wrote them.

A large device is mostly idle under one small run, so a rank may run several of its prompts at once
(``per_device``, the CLI's ``--per-gpu``): each in its own spawned process, the next starting as soon as one
ends. A process that dies without a result (killed, out of memory) fails only its own prompt. Left unset,
the number is 1 on the CPU and, on CUDA, as many runs as the free memory holds (``auto_per_device``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext, SpawnProcess
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
from dreamfusion.typed_config import ConfigError

GiB = 2**30
MAX_PER_DEVICE = 64
"""The most prompts one device may run at once: each is a process with its own copy of the prior."""
AUTO_PER_DEVICE_CAP = 8
"""The most prompts at once that the automatic choice picks; ask for more with ``per_device``."""
PRIOR_PEAK_BYTES: dict[str, int] = {
    "analytic": GiB // 2,
    "embedded": 4 * GiB,  # measured: a default run (64 px renders, 64+ samples per ray) peaks under 4 GiB
    "sd": 7 * GiB,  # measured: Stable Diffusion 2.1 at fp16 peaks around 6 GB
    "if": 11 * GiB,  # measured: DeepFloyd IF stage I peaks around 10 GB
}
"""Device memory of one run apart from its hash table's training state, by prior, from measured peaks: the
prior's weights and one guidance step, the renders, the process's CUDA context."""
KILL_PROMPT_VARIABLE = "DREAMFUSION_TEST_KILL_PROMPT"
"""Test hook: a prompt's child process whose prompt equals this variable kills itself at once (SIGKILL), as
the kernel's out-of-memory killer would. Read only in child processes."""


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
    started_at: float = 0.0
    """Wall-clock time (``time.time()``) when the prompt started; with ``ended_at``, when it ran."""
    ended_at: float = 0.0


@dataclass(frozen=True)
class PromptJob:
    """One prompt for a child process: what ``_run_one`` needs, all picklable (the device by name)."""

    index: int
    prompt: str
    prompts: list[str]
    out_dir: Path
    base_config: RunConfig
    device: str
    rank: int
    overwrite: bool
    at_once: int
    """Prompts running at once on this device: on the CPU they share its cores."""


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


def run_memory_estimate(config: RunConfig) -> int:
    """A conservative estimate, in bytes, of one run's peak device memory, for choosing how many runs share a
    device: the prior's share (``PRIOR_PEAK_BYTES``; the largest for a prior not listed there) plus the hash
    table four times over in float32 (parameters, gradients and Adam's two moments), i.e.
    2^log2_table_size rows x levels x features x 4 bytes x 4. The rest of the field is small beside these."""
    encoding = config.field.encoding
    table_entries = 2**encoding.log2_table_size * encoding.levels * encoding.features_per_level
    base = PRIOR_PEAK_BYTES.get(config.prior.name, max(PRIOR_PEAK_BYTES.values()))
    return base + table_entries * 4 * 4


def auto_per_device(device: torch.device | str, free_bytes: int | None, need_bytes: int, cap: int = AUTO_PER_DEVICE_CAP) -> int:
    """How many prompts to run at once on ``device`` when the user did not say: 1 off CUDA (on the CPU one run
    already uses every core) or when the free memory is unknown; on CUDA as many runs of ``need_bytes`` as
    ``free_bytes`` holds, at least 1 and at most ``cap``."""
    if torch.device(device).type != "cuda" or free_bytes is None:
        return 1
    return max(1, min(cap, free_bytes // max(1, need_bytes)))


def check_per_device(per_device: int, option: str = "per_device") -> None:
    """ConfigError unless ``per_device`` (named ``option`` in the message) is from 1 to ``MAX_PER_DEVICE``."""
    if not 1 <= per_device <= MAX_PER_DEVICE:
        raise ConfigError(f"{option} must be from 1 to {MAX_PER_DEVICE} prompts at once on each device, got {per_device}")


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
    per_device: int | None = None,
) -> BatchSummary:
    """Generate this rank's share of the prompts into ``out_dir``; a failed prompt never stops the others.

    With ``world_size`` > 1 the torch.distributed process group must exist (torchrun +
    ``init_distributed``): rank 0 reads the prompts file and shares it, and gathers the summaries. Returns
    the whole batch's summary on rank 0, this rank's own elsewhere. ``device``: this rank's (default: the
    base config's). ``per_device``: prompts this rank runs at once, each in its own process (1: one after
    another in this process; None: ``auto_per_device`` picks, from the device's free memory).
    """
    if per_device is not None:
        check_per_device(per_device)
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
        return _run_shard(prompts, Path(out_dir), base_config, context, overwrite, per_device)
    finally:
        if lock is not None:
            lock.release()


def _run_shard(
    prompts: list[str], out_dir: Path, base_config: RunConfig, context: DistributedContext, overwrite: bool,
    per_device: int | None,
) -> BatchSummary:  # fmt: skip
    rank, world_size = context.rank, context.world_size
    own = BatchSummary(total=len(prompts), world_size=world_size)
    share = shard(prompts, rank, world_size)
    at_once = per_device if per_device is not None else _auto_at_once(base_config, context.device, rank, len(share))
    if at_once == 1:
        alone = DistributedContext.single(context.device)  # each prompt: one process, no gradient sync
        own.results = [_run_one(index, prompt, prompts, out_dir, base_config, alone, rank, overwrite) for index, prompt in share]
    else:
        jobs = [PromptJob(index, prompt, prompts, out_dir, base_config, str(context.device), rank, overwrite, at_once)
                for index, prompt in share]  # fmt: skip
        own.results = run_in_processes(jobs, at_once)
    write_text_atomic(out_dir / f"summary.rank{rank}.json", own.to_json())

    gathered = gather_to_main(context, own.results)
    if gathered is None:
        return own
    merged = BatchSummary(total=len(prompts), world_size=world_size)
    merged.results = sorted((r for results in gathered for r in results), key=lambda r: r.index)
    write_text_atomic(out_dir / "summary.json", merged.to_json())
    _log(merged.report())
    return merged


def _auto_at_once(base_config: RunConfig, device: torch.device, rank: int, share_size: int) -> int:
    """``auto_per_device`` for this rank's device, no more than its prompts; says what it chose and why."""
    if device.type != "cuda":
        if share_size:
            _log(f"[rank {rank}] running 1 prompt at a time on {device} (one run already uses every core)")
        return 1
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    free, need = torch.cuda.mem_get_info(device)[0], run_memory_estimate(base_config)
    at_once = min(auto_per_device(device, free, need), max(1, share_size))
    if share_size:
        amount = f"{at_once} prompts at once" if at_once > 1 else "1 prompt at a time"
        _log(f"[rank {rank}] running {amount} on {device} ({free / GiB:.1f} GiB free, about {need / GiB:.1f} GiB per run)")
    return at_once


def _run_one(
    index: int, prompt: str, prompts: list[str], out_dir: Path, base_config: RunConfig,
    context: DistributedContext, rank: int, overwrite: bool,
) -> PromptResult:  # fmt: skip
    run_dir = out_dir / run_dir_name(index, prompt, len(prompts))
    result = PromptResult(index=index, prompt=prompt, run_dir=str(run_dir), rank=rank, ok=False, started_at=time.time())
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
    result.ended_at = time.time()
    _log_result(result, len(prompts))
    return result


def _log_result(result: PromptResult, total: int) -> None:
    status = "done" if result.ok else f"failed: {result.error_type}: {result.error}"
    _log(f"[rank {result.rank}] {result.index + 1}/{total} {result.prompt!r} {status} ({result.seconds:.0f} s)")


# ----- several prompts at once, each in its own process -------------------------------------------------


def run_prompt_job(job: PromptJob, sender: Connection) -> None:
    """The entry point of a prompt's child process: run the prompt as ``_run_one`` does and send its
    PromptResult to the parent. User errors become the result, as in one process; no traceback is printed."""
    if os.environ.get(KILL_PROMPT_VARIABLE) == job.prompt:
        os.kill(os.getpid(), signal.SIGKILL)
    device = torch.device(job.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.at_once))  # the prompts share the cores
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        result = _run_one(job.index, job.prompt, job.prompts, job.out_dir, job.base_config,
                          DistributedContext.single(device), job.rank, job.overwrite)  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal; the parent reports it
        sys.exit(130)
    sender.send(result)
    sender.close()


def run_in_processes(jobs: list[PromptJob], at_once: int) -> list[PromptResult]:
    """Run each job in its own spawned process, at most ``at_once`` alive, the next starting as soon as one
    ends; the results sorted by index. A process that ends without a result fails its prompt ("WorkerDied")."""
    spawn = multiprocessing.get_context("spawn")
    waiting = deque(jobs)
    running: list[_Child] = []
    results: list[PromptResult] = []
    try:
        while waiting or running:
            while waiting and len(running) < at_once:
                running.append(_Child.start(spawn, waiting.popleft()))
            ready = set(wait([handle for child in running for handle in child.handles()]))
            for child in list(running):
                result = child.advance(ready)
                if result is not None:
                    running.remove(child)
                    results.append(result)
    finally:
        for child in running:  # only when the batch itself stops (Ctrl-C, a bug): leave no process behind
            child.stop()
    return sorted(results, key=lambda r: r.index)


@dataclass
class _Child:
    """One prompt's process and the parent's end of the pipe it sends its result through."""

    job: PromptJob
    process: SpawnProcess
    receiver: Connection | None
    """None once read (or found empty)."""
    started_at: float
    result: PromptResult | None = None

    @classmethod
    def start(cls, spawn: SpawnContext, job: PromptJob) -> _Child:
        receiver, sender = spawn.Pipe(duplex=False)
        process = spawn.Process(target=run_prompt_job, args=(job, sender), name=f"dreamfusion-prompt-{job.index}")
        started_at = time.time()
        process.start()
        sender.close()  # the child has its own copy; ours would keep the pipe from ever reporting its end
        return cls(job, process, receiver, started_at)

    def handles(self) -> list[object]:
        """What ``wait`` watches: the process's end, and its result arriving (read at once, so that a result
        larger than the pipe's buffer never blocks the child)."""
        return [self.process.sentinel, *([self.receiver] if self.receiver is not None else [])]

    def advance(self, ready: set[object]) -> PromptResult | None:
        """Read what ``ready`` says has arrived; once the process has ended, the prompt's result."""
        if self.receiver is not None and self.receiver in ready:
            self._receive()
        if self.process.sentinel not in ready:
            return None
        self.process.join()
        if self.receiver is not None:
            self._receive()
        return self.result if self.result is not None else self._died()

    def _receive(self) -> None:
        """Read the result; the pipe is ready (a result, or its end) or the process has ended."""
        assert self.receiver is not None
        try:
            if self.receiver.poll():
                self.result = self.receiver.recv()
        except (EOFError, OSError):
            pass  # the child ended before sending anything
        self.receiver.close()  # a child sends once: nothing more can come
        self.receiver = None

    def _died(self) -> PromptResult:
        job = self.job
        result = PromptResult(
            index=job.index, prompt=job.prompt, run_dir=str(job.out_dir / run_dir_name(job.index, job.prompt, len(job.prompts))),
            rank=job.rank, ok=False, error_type="WorkerDied", started_at=self.started_at, ended_at=time.time(),
            error=f"its process ended with exit code {_exit_code_name(self.process.exitcode)} before reporting a result: "
                  "killed (often for lack of memory) or crashed",
        )  # fmt: skip
        result.seconds = result.ended_at - result.started_at
        _log_result(result, len(job.prompts))
        return result

    def stop(self) -> None:
        """End the process if it still runs: SIGTERM, then SIGKILL if it does not go."""
        self.process.terminate()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        if self.receiver is not None:
            self.receiver.close()


def _exit_code_name(code: int | None) -> str:
    """A process's exit code, with the signal's name where a signal ended it (negative codes): "-9 (SIGKILL)"."""
    if code is not None and code < 0 and -code in signal.valid_signals():
        return f"{code} ({signal.Signals(-code).name})"
    return str(code)


def run_batch_from_env(
    prompts_file: Path, out_dir: Path, base_config: RunConfig, overwrite: bool = False, per_device: int | None = None
) -> BatchSummary:
    """``run_batch`` for this process of a torchrun job (or alone, without torchrun): what the CLI calls."""
    owns_group = not group_exists()
    context = init_distributed(base_config.device)
    try:
        return run_batch(
            prompts_file, out_dir, base_config, context.rank, context.world_size, context.device, overwrite, per_device
        )
    finally:
        if owns_group:
            cleanup(context)


__all__ = [
    "MAX_PER_DEVICE", "BatchSummary", "PromptJob", "PromptResult", "auto_per_device", "check_per_device", "read_prompts",
    "run_batch", "run_batch_from_env", "run_in_processes", "run_memory_estimate", "run_prompt_job", "shard",
]  # fmt: skip
