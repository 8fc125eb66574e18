"""A policy value is checked once, where it enters: the config file or the command line. Both
call the same rule, so a refusal reads the same wherever the value came from."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.cli import common
from worker.core.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    ("toml", "convert", "text"),
    [
        ("temperature = 0", common.temperature, "0"),
        ("temperature = -1.5", common.temperature, "-1.5"),
        ("temperature = nan", common.temperature, "nan"),
        ("temperature = inf", common.temperatures, "0.7,inf"),
        ("min_margin = 1.5", common.probability, "1.5"),
        ("min_top1 = nan", common.probability, "nan"),
        ('labels = ["only-one"]', common.labels, "only-one"),
        ('labels = ["a", ""]', common.labels, "a,"),
        ('labels = ["a", "b", "a"]', common.labels, "a,b,a"),
    ],
)
def test_the_config_and_the_command_line_refuse_in_the_same_words(
    tmp_path: Path, toml: str, convert: Callable[[str], object], text: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as cli:
        convert(text)
    reason = str(cli.value).rpartition(", got ")[0]
    assert reason
    path = tmp_path / "c.toml"
    path.write_text(f'[topics."t"]\n{toml}\n')
    with pytest.raises(ConfigError) as config:
        load_settings(path)
    field = toml.split(" = ")[0]
    assert f"topics.t.{field} = " in str(config.value)
    assert str(config.value).endswith(f": {reason}")


@pytest.mark.parametrize("text", ["0.7", "1", "1e-3", "2.5"])
def test_a_good_temperature_passes_both_edges(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[topics."t"]\ntemperature = {text}\n')
    assert load_settings(path).topics["t"].temperature == common.temperature(text) == float(text)
