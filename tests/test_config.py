import dataclasses
from pathlib import Path

import pytest
import yaml

from dreamfusion.config import PRESETS, RunConfig, build_config, dump_config, load_config
from dreamfusion.priors import PRIORS
from dreamfusion.priors.deepfloyd_if import DeepFloydIFPriorConfig
from dreamfusion.priors.embedded import EmbeddedPriorConfig
from dreamfusion.priors.stable_diffusion import StableDiffusionPriorConfig
from dreamfusion.schedules import TimestepRange
from dreamfusion.typed_config import ConfigError, from_dict, merge


def test_yaml_round_trip_of_every_preset(tmp_path: Path) -> None:
    for preset in PRESETS:
        config = build_config(preset, overrides={"prompt": "a red chair", "seed": 3})
        path = tmp_path / f"{preset}.yaml"
        path.write_text(dump_config(config))
        assert load_config(path) == config


def test_strictness() -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(RunConfig, {"camera": {"resolutoin": 32}})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(RunConfig, {"field": {"density_bias": "cube"}})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(RunConfig, {"trainer": {"iters": 1.5}})
    with pytest.raises(ConfigError, match="expected 2 values"):
        from_dict(RunConfig, {"camera": {"distance_range": [1.0]}})
    with pytest.raises(ConfigError, match="iters must be positive"):
        build_config(overrides={"trainer": {"iters": 0}})


def test_configs_are_frozen() -> None:
    config = RunConfig()
    with pytest.raises(AttributeError):
        config.seed = 4  # type: ignore[misc]


def test_the_prior_section_is_the_chosen_priors_own_config() -> None:
    config = build_config(overrides={"prior": {"name": "sd", "model": "sd21", "vae_slicing": True, "latent": "sample"}})
    assert isinstance(config.prior, StableDiffusionPriorConfig)
    assert (config.prior.model, config.prior.vae_slicing, config.prior.latent) == ("sd21", True, "sample")
    # Keys without a name stay with the current prior; a new name starts from that prior's defaults.
    assert merge(config, {"prior": {"compile_unet": True}}).prior.vae_slicing is True
    switched = merge(config, {"prior": {"name": "if"}}).prior
    assert isinstance(switched, DeepFloydIFPriorConfig) and switched.model is None
    assert isinstance(from_dict(RunConfig, {"prior": {"model": "w.safetensors"}}).prior, EmbeddedPriorConfig)
    with pytest.raises(ConfigError, match="unknown config key in prior: vae_slicing"):
        build_config(overrides={"prior": {"name": "if", "vae_slicing": True}})
    with pytest.raises(ConfigError, match="prior.name: 'dalle' is not one of"):
        from_dict(RunConfig, {"prior": {"name": "dalle"}})


def test_every_option_of_every_prior_reads_from_yaml(tmp_path: Path) -> None:
    for name, entry in PRIORS.items():
        config = build_config(overrides={"prior": {"name": name}})
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_config(config))
        assert set(yaml.safe_load(path.read_text())["prior"]) == {f.name for f in dataclasses.fields(entry.config)}
        assert load_config(path) == config


def test_configs_of_earlier_runs_are_read_in_todays_layout() -> None:
    """Before each prior had its own config, one prior section served all of them, Perp-Neg was a prior option
    and the timestep range two guidance keys."""
    flat = {"model": None, "precision": "auto", "vae_resolution": None, "cuda_graph": True,
            "compile_unet": True, "compile_vae": True, "channels_last": True}  # fmt: skip
    old = {"prompt": "a red chair", "prior": {"name": "embedded", **flat, "perp_neg": None},
           "guidance": {"guidance_scale": None, "t_range": [0.02, 0.98], "t_range_end": [0.02, 0.5], "weighting": "sds",
                        "negative_prompt": ""}}  # fmt: skip
    config = RunConfig.from_saved(old)
    assert config.prior == EmbeddedPriorConfig()  # compile options had no effect on the embedded prior
    assert config.guidance.timesteps == TimestepRange((0.02, 0.98), (0.02, 0.5)) and config.guidance.mode == "auto"
    sd = RunConfig.from_saved({"prior": {"name": "sd", **flat, "model": "sd21", "perp_neg": True}})
    assert sd.prior == StableDiffusionPriorConfig(model="sd21", compile_unet=True, compile_vae=True, channels_last=True)
    assert sd.guidance.mode == "perp_neg"
    assert RunConfig.from_saved({"prior": {"name": "if", **flat, "perp_neg": False}}).guidance.mode == "cfg"
