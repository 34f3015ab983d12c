"""The run config: every component's config in one frozen tree, presets, and YAML load / dump."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from dreamfusion.cameras import CameraConfig, TurntableConfig
from dreamfusion.collapse import CollapseConfig
from dreamfusion.export.mesh import MeshExportConfig
from dreamfusion.field import FieldConfig, HashGridConfig
from dreamfusion.guidance import GuidanceConfig
from dreamfusion.priors import PRIORS, PriorConfig
from dreamfusion.priors.embedded import EmbeddedPriorConfig
from dreamfusion.refine import RefineConfig
from dreamfusion.renderer import RendererConfig
from dreamfusion.schedules import Ramp
from dreamfusion.shading import BackgroundConfig, ShadingConfig
from dreamfusion.trainer import TrainerConfig
from dreamfusion.typed_config import ConfigError, check_seed, from_dict, merge, to_dict

Preset = Literal["preview", "default", "quality"]


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; written to the run directory as config.yaml and never changed during it."""

    prompt: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prior: PriorConfig = EmbeddedPriorConfig()
    """The prior's own config: ``name`` picks the prior, the other keys are that prior's options."""
    camera: CameraConfig = CameraConfig()
    field: FieldConfig = FieldConfig()
    background: BackgroundConfig = BackgroundConfig()
    renderer: RendererConfig = RendererConfig()
    shading: ShadingConfig = ShadingConfig()
    guidance: GuidanceConfig = GuidanceConfig()
    trainer: TrainerConfig = TrainerConfig()
    refine: RefineConfig = RefineConfig()
    """The surface stage after the NeRF (off while ``refine.iters`` is 0)."""
    collapse: CollapseConfig = CollapseConfig()
    """A run that fills its views with haze, or empties, early on starts over on the next seed."""
    turntable: TurntableConfig = TurntableConfig()
    mesh: MeshExportConfig = MeshExportConfig(resolution=128)
    """The mesh.glb a run writes (``dreamfusion export`` makes others, at grid 256 by default)."""

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.refine.iters > 0 and self.refine.resolution < self.camera.resolution:
            raise ValueError(
                f"refine resolution ({self.refine.resolution}) must be at least camera resolution ({self.camera.resolution})"
            )

    @property
    def total_steps(self) -> int:
        """Steps of the whole run: the NeRF's, then the surface stage's."""
        return self.trainer.iters + self.refine.iters

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> RunConfig:
        """A config as a run saved it (config.yaml or a checkpoint), in any layout this version reads;
        settings added since it was written take their defaults."""
        return from_dict(cls, upgrade(data))


# Overrides on top of the defaults. "preview" is sized for a CPU: a coarser grid, fewer samples and steps.
PRESETS: dict[str, dict[str, Any]] = {
    "preview": {
        "camera": {"resolution": 32},
        # The finest grid cell at half a 32 px pixel (see HashGridConfig.max_resolution): 256 left speckle.
        "field": {"encoding": {"levels": 8, "log2_table_size": 15, "max_resolution": 64}, "hidden": 32},
        "renderer": {"num_samples": 32},
        "shading": {"albedo_warmup_steps": 100},
        # Measured on 2 CPU cores with the embedded prior: "a red chair" with legs and back in about 4 minutes;
        # annealing t towards small noise levels is what turns the lump into a shape in so few steps. The
        # prior's own guidance (30 for the embedded one): at 20 the current weights leave a red haze.
        # Perp-Neg's extra prior evaluations cost 70% more time per step on a CPU.
        "guidance": {"mode": "cfg", "timesteps": {"end": [0.02, 0.5]}},
        "trainer": {
            "iters": 700,
            "lr": 3e-2,  # few steps: a coarser grid tolerates, and needs, larger ones
            "checkpoint_every": 100,
            "lambda_orient": {"start": 1e-4, "end": 1e-2, "steps": 200, "kind": "log"},
        },
        "turntable": {"frames": 36},
    },
    "default": {},
    "quality": {
        "renderer": {"num_samples": 64, "num_importance": 32},
        "shading": {"albedo_warmup_steps": 2000},
        "trainer": {
            "iters": 10000,
            "batch_size": 4,
            "lambda_orient": {"start": 1e-4, "end": 1e-2, "steps": 3000, "kind": "log"},
        },
        "guidance": {"timesteps": {"end": [0.02, 0.5]}},
        "turntable": {"frames": 120, "resolution": 128},
    },
}


def build_config(preset: str = "default", file: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the preset, then a YAML/JSON file, then explicit overrides (e.g. from the command line)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    config = merge(RunConfig(), PRESETS[preset])
    if file is not None:
        config = merge(config, read_config_file(file))
    return merge(config, overrides or {})


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def load_config(path: Path) -> RunConfig:
    """Read a complete config.yaml as written by ``dump_config``."""
    return RunConfig.from_saved(read_config_file(path))


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A config dict as saved in a checkpoint, completed with the defaults of keys added since it was written
    (so runs made before a new setting existed still match their config.yaml); unknown keys fail."""
    return to_dict(RunConfig.from_saved(saved))


_FLAT_PRIOR_KEYS = ("model", "precision", "perp_neg", "vae_resolution", "cuda_graph", "compile_unet", "compile_vae", "channels_last")
"""The keys of the one prior section every prior shared before each prior had its own config."""


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict in today's layout. Runs written before guidance owned Perp-Neg and its timestep
    schedule had ``prior.perp_neg`` and ``guidance.t_range`` / ``t_range_end``, and one prior section for every
    prior; the keys the chosen prior never read are dropped (they had no effect on it)."""
    data = copy.deepcopy(data)
    guidance, prior = data.get("guidance"), data.get("prior")
    if isinstance(guidance, dict) and ("t_range" in guidance or "t_range_end" in guidance):
        guidance["timesteps"] = {"start": guidance.pop("t_range", [0.02, 0.98]), "end": guidance.pop("t_range_end", None)}
    if isinstance(prior, dict) and "perp_neg" in prior:
        perp_neg = prior.pop("perp_neg")
        if perp_neg is not None:
            data["guidance"] = {**(guidance or {}), "mode": "perp_neg" if perp_neg else "cfg"}
        name = prior.get("name", "embedded")
        if name in PRIORS:
            known = {f.name for f in dataclasses.fields(PRIORS[name].config)}
            for key in _FLAT_PRIOR_KEYS:
                if key not in known:
                    prior.pop(key, None)
    return data


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


__all__ = ["PRESETS", "ConfigError", "HashGridConfig", "Preset", "Ramp", "RunConfig", "build_config", "dump_config", "load_config"]
