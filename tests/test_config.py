from pathlib import Path

import pytest

from dreamfusion.config import PRESETS, RunConfig, build_config, dump_config, load_config
from dreamfusion.schedules import LearningRateSchedule, Ramp
from dreamfusion.typed_config import ConfigError, from_dict


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


def test_schedules() -> None:
    ramp = Ramp(start=1e-4, end=1e-2, steps=100, kind="log")
    assert ramp(0) == 1e-4 and ramp(100) == 1e-2 and ramp(1000) == 1e-2
    assert ramp(50) == pytest.approx(1e-3)
    assert Ramp(start=1.0, end=3.0, steps=10, delay=10)(15) == pytest.approx(2.0)
    assert Ramp(start=0.5)(10**6) == 0.5
    cosine = LearningRateSchedule(warmup_steps=10, decay="cosine", min_factor=0.1)
    assert cosine.factor(0, 110) == pytest.approx(0.1) and cosine.factor(9, 110) == 1.0
    assert cosine.factor(60, 110) == pytest.approx(0.55) and cosine.factor(110, 110) == pytest.approx(0.1)
