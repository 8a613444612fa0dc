"""Property-based checks of the params schema (Hypothesis): no number a user can type gets past validation
unless its key's declared range admits it, and every refusal is a ConfigError naming the key."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.config.experiment import Config, config_from_dict, load_config
from genlab.core.errors import ConfigError


def _numeric(tp) -> bool:
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp in (int, float)


def _numeric_keys() -> dict[str, dataclasses.Field]:
    """'section.key' (or 'key' at the top) -> its field, for every int or float key of every section."""
    out = {}
    hints = typing.get_type_hints(Config)
    for top in dataclasses.fields(Config):
        if _numeric(hints[top.name]):
            out[top.name] = top
        elif dataclasses.is_dataclass(hints[top.name]):
            section = typing.get_type_hints(hints[top.name])
            out.update(
                {f"{top.name}.{f.name}": f for f in dataclasses.fields(hints[top.name]) if _numeric(section[f.name])}
            )
    return out


NUMERIC = _numeric_keys()


def _raw(dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    raw = {leaf: value}
    for part in reversed(parents):
        raw = {part: raw}
    return raw


def test_the_schema_has_numeric_keys_in_every_section_and_a_declared_range_for_each():
    assert {k.split(".")[0] for k in NUMERIC} >= {"seed", "data", "train", "vae", "gan", "ddpm", "flowmo", "maskgit"}
    unchecked = [k for k, f in NUMERIC.items() if f.metadata.get("check") is None and k != "train.grad_clip"]
    assert unchecked == []  # train.grad_clip (null = off) has its range in TrainConfig.check


BAD = st.one_of(
    st.integers(max_value=-1),
    st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@settings(max_examples=600, deadline=None)
@given(key=st.sampled_from(sorted(NUMERIC)), value=BAD)
def test_negative_nan_and_infinite_numbers_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict(_raw(key, value))


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(sorted(NUMERIC)), zero=st.sampled_from([0, 0.0, -0.0]))
def test_zero_passes_only_where_the_declared_range_admits_it(key, zero):
    field = NUMERIC[key]
    check = field.metadata.get("check")
    try:
        cfg = config_from_dict(_raw(key, zero))
    except ConfigError as exc:
        assert f"'{key}'" in str(exc)
        return
    section, _, name = key.rpartition(".")
    value = getattr(getattr(cfg, section) if section else cfg, name)
    assert value == 0 and (check is None or check[0](value)), key


@pytest.mark.parametrize("text", ["train: [epochs: 3", "just a sentence", "- 1\n- 2\n", "train:\n\tepochs: 3\n"])
def test_params_yaml_that_is_not_a_yaml_mapping_is_refused(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid YAML|must be a mapping"):
        load_config(path)


def _lists_of_int() -> list[str]:
    hints = typing.get_type_hints(Config)
    return [
        f"{top.name}.{f.name}"
        for top in dataclasses.fields(Config)
        if dataclasses.is_dataclass(hints[top.name])
        for f in dataclasses.fields(hints[top.name])
        if typing.get_type_hints(hints[top.name])[f.name] == list[int]
    ]


def _hint(key: str):
    *section, name = key.split(".")
    return typing.get_type_hints(typing.get_type_hints(Config)[section[0]] if section else Config)[name]


INTEGER = sorted(k for k in NUMERIC if _hint(k) in (int, Optional[int]))


def test_every_count_has_a_maximum_that_a_typo_cannot_pass():
    """train.epochs: 1000000000000 trained until killed; every integer key and list of integers has a maximum."""
    assert {"seed", "train.epochs", "train.batch_size", "vae.iw_samples", "gan.n_critic"} <= set(INTEGER)
    for key in INTEGER:
        with pytest.raises(ConfigError, match=rf"'{key}' = 1000000000000 is out of range: expected an integer in"):
            config_from_dict(_raw(key, 10**12))
    assert len(_lists_of_int()) >= 6
    for key in _lists_of_int():
        for value in ([10**12], [1] * 100):
            with pytest.raises(ConfigError, match=rf"'{key}' = .* is out of range: expected a list of 1 to \d+"):
                config_from_dict(_raw(key, value))
