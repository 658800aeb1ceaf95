"""Typed, frozen view of params.yaml.

Every stage parses params.yaml once, here, before doing any work. An unknown key, a value of
the wrong type or one outside its allowed range raises :class:`ConfigError` with a message that
names the dotted key, the value given and what is allowed. Library code never opens params.yaml;
stages pass these objects (or plain values from them) down.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

DATASETS = ("fashion-mnist", "mnist", "cifar10")
DEVICES = ("auto", "cpu", "cuda", "mps")
ACTIVATIONS = ("relu", "leaky_relu")
LIKELIHOODS = ("bernoulli", "gaussian")
OPTIMIZERS = ("adam", "adamw")
KL_SCHEDULES = ("constant", "linear", "cyclical")


class ConfigError(ValueError):
    """A params value that is unknown, of the wrong type or out of range."""


def _spec(default: Any = dataclasses.MISSING, *, choices: tuple | None = None,
          lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, min_len: int = 0, help: str = "") -> Any:
    """A dataclass field carrying its validation rule in metadata."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "min_len": min_len, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): d, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _spec("fashion-mnist", choices=DATASETS)
    mirror: str | None = _spec(None, help="a directory holding the dataset's files")
    val_fraction: float = _spec(0.1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    split_seed: int = _spec(42, lo=0)
    dequantize: bool = _spec(False, help="add U[0,1) noise to the 8-bit pixels while training")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and KL-schedule keys shared by every model section."""
    likelihood: str = _spec("bernoulli", choices=LIKELIHOODS)
    obs_std: float = _spec(1.0, lo=0.0, lo_open=True,
                           help="fixed pixel standard deviation of the gaussian likelihood")
    epochs: int = _spec(10, lo=1)
    batch_size: int = _spec(128, lo=1)
    optimizer: str = _spec("adam", choices=OPTIMIZERS)
    lr: float = _spec(1e-3, lo=0.0, hi=1.0, lo_open=True)
    weight_decay: float = _spec(0.0, lo=0.0)
    grad_clip: float = _spec(0.0, lo=0.0, help="max gradient norm; 0 disables clipping")
    kl_schedule: str = _spec("constant", choices=KL_SCHEDULES)
    warmup_epochs: int = _spec(0, lo=0, help="linear: epochs to reach beta")
    cycles: int = _spec(4, lo=1, help="cyclical: number of cycles over the run")
    cycle_ratio: float = _spec(0.5, lo=0.0, hi=1.0, lo_open=True,
                               help="cyclical: fraction of each cycle spent increasing")


@dataclass(frozen=True)
class MLPConfig(TrainConfig):
    hidden: tuple[int, ...] = _spec([512, 256], min_len=1, lo=1)
    activation: str = _spec("leaky_relu", choices=ACTIVATIONS)
    negative_slope: float = _spec(0.2, lo=0.0, hi=1.0, hi_open=True)
    latent_dim: int = _spec(32, lo=1)


@dataclass(frozen=True)
class ConvConfig(TrainConfig):
    channels: tuple[int, ...] = _spec([32, 64], min_len=1, lo=1)
    latent_dim: int = _spec(16, lo=1)


@dataclass(frozen=True)
class SweepConfig:
    betas: tuple[float, ...] = _spec([0.1, 0.5, 1.0], min_len=1, lo=0.0)
    epochs: int = _spec(20, lo=1)
    latent_dim: int = _spec(2, lo=1)
    classes: tuple[int, ...] = _spec([0, 1, 7], min_len=2, lo=0, hi=9)


@dataclass(frozen=True)
class Params:
    seed: int = _spec(42, lo=0)
    device: str = _spec("auto", choices=DEVICES)
    beta: float = _spec(1.0, lo=0.0, help="KL weight the main models train towards")
    data: DataConfig = field(default_factory=DataConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    conv: ConvConfig = field(default_factory=ConvConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _range_text(meta: Mapping[str, Any]) -> str:
    lo, hi = meta["lo"], meta["hi"]
    parts = []
    if lo is not None:
        parts.append(f"{'>' if meta['lo_open'] else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if meta['hi_open'] else '<='} {hi:g}")
    return " and ".join(parts)


def _check_scalar(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None or hi is not None:
        bad = ((lo is not None and (value <= lo if meta["lo_open"] else value < lo))
               or (hi is not None and (value >= hi if meta["hi_open"] else value > hi)))
        if bad:
            raise ConfigError(f"{key} must be {_range_text(meta)}, got {value!r}")
    return value


def _check_field(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X] / X | None
        inner = [a for a in args if a is not type(None)][0]
        return None if value is None else _check_field(key, value, inner, meta)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of {_PLURAL[args[0]]}, got {value!r}")
        if len(value) < meta.get("min_len", 0):
            raise ConfigError(f"{key} must list at least {meta['min_len']} value(s), got {value!r}")
        return tuple(_check_scalar(f"{key}[{i}]", v, args[0], meta) for i, v in enumerate(value))
    return _check_scalar(key, value, tp, meta)


T = typing.TypeVar("T")


def parse_section(cls: type[T], raw: Any, prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, validating every key."""
    where = prefix.rstrip(".") or "params.yaml"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; allowed keys in {where}: "
                          f"{', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = parse_section(tp, value, f"{prefix}{name}.")
        else:
            values[name] = _check_field(f"{prefix}{name}", value, tp, fields[name].metadata)
    return cls(**values)


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as loaded from params.yaml) into :class:`Params`."""
    params = parse_section(Params, raw)
    for name in ("mlp", "conv"):
        section = getattr(params, name)
        if section.kl_schedule == "cyclical" and section.cycles > section.epochs:
            raise ConfigError(f"{name}.cycles must be <= {name}.epochs "
                              f"({section.epochs}), got {section.cycles}")
    if len(set(params.sweep.classes)) != len(params.sweep.classes):
        raise ConfigError(f"sweep.classes must not repeat a class, got {list(params.sweep.classes)}")
    return params


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-05`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-5``); ``dvc exp run -S
    conv.weight_decay=1e-5`` writes ``1e-05``, which safe_load would return as a string.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; a missing or unparsable file is a ConfigError."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run the stage from the project root") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw)


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain dicts/lists (for checkpoints and JSON)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj
