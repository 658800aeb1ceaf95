"""Typed, frozen view of params.yaml, validated by pydantic v2.

Every stage parses params.yaml once, here, before doing any work. The models below hold the
seeds' recipes as their defaults (seed 000 for ``mlp``, seed 002 for ``conv`` and ``sweep``),
so a key left out of params.yaml gets the same value params.yaml documents. An unknown key, a
value of the wrong type or one outside its allowed range raises :class:`ConfigError` with one
line that names the dotted key, the value given and what is allowed, for example
``data.dataset must be one of fashion-mnist, mnist, cifar10, folder; got 'fashion'``. Library code
never opens params.yaml; stages pass these objects (or plain values from them) down.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Dataset = Literal["fashion-mnist", "mnist", "cifar10", "folder"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Activation = Literal["relu", "leaky_relu"]
Likelihood = Literal["bernoulli", "gaussian", "continuous_bernoulli", "discretized_logistic"]
Binarize = Literal["none", "dynamic"]
Optimizer = Literal["adam", "adamw"]
KLSchedule = Literal["constant", "linear", "cyclical"]

# strict=True: no silent coercion ("1" is not 1, true is not 1); a float field still takes an
# int. Lists are parsed leniently (YAML gives lists, the models keep tuples) but their items
# stay strict.
NonNegative = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
# classes by index or by name (a folder's class names are its sub-folders' names)
ClassList = Annotated[tuple[Annotated[int, Field(strict=True, ge=0)] | str, ...],
                      Field(strict=False, min_length=1)]


class ConfigError(ValueError):
    """A params value that is unknown, of the wrong type or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Section):
    dataset: Dataset = "fashion-mnist"
    mirror: str | None = Field(None, description="a directory holding the dataset's files")
    val_fraction: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False)
    split_seed: int = Field(42, ge=0)
    dequantize: bool = Field(False, description="add U[0,1) noise to the 8-bit pixels")
    binarize: Binarize = Field("none", description="dynamic: Bernoulli pixels drawn anew each "
                                                   "training epoch, once for validation/test")
    # dataset: folder only (the named datasets keep their own size, channels and test set)
    path: str = Field("data/images", min_length=1, description="the folder of images")
    image_size: Literal[28, 32, 64] = 32
    channels: Literal["auto", 1, 3] = Field("auto", description="auto: 3 if any image is colour")
    test_fraction: float = Field(0.2, gt=0, lt=1, allow_inf_nan=False)


# the data keys that change what a model trains on from a folder; a named dataset fixes them
FOLDER_KEYS = ("path", "image_size", "channels", "test_fraction")


def training_data(data: DataConfig) -> dict[str, Any]:
    """The data keys a checkpoint records: those that change what training sees (not where the
    raw files came from, nor a folder's keys when the dataset is a named one)."""
    skip = {"mirror", *(FOLDER_KEYS if data.dataset != "folder" else ())}
    return {k: v for k, v in to_dict(data).items() if k not in skip}


class TrainConfig(_Section):
    """Optimisation and KL-schedule keys shared by every model section.

    The defaults here are the conv recipe's (seed 002); :class:`MLPConfig` overrides those
    that seed 000 sets differently.
    """
    likelihood: Likelihood = "bernoulli"
    obs_std: float = Field(1.0, gt=0, allow_inf_nan=False,
                           description="fixed pixel standard deviation of the gaussian likelihood")
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Optimizer = "adam"
    lr: float = Field(1e-3, gt=0, le=1, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    grad_clip: float = Field(0.0, ge=0, allow_inf_nan=False,
                             description="max gradient norm; 0 disables clipping")
    kl_schedule: KLSchedule = "constant"
    warmup_epochs: int = Field(0, ge=0, description="linear: epochs to reach beta")
    cycles: int = Field(4, ge=1, description="cyclical: number of cycles over the run")
    cycle_ratio: float = Field(0.5, gt=0, le=1, allow_inf_nan=False,
                               description="cyclical: fraction of each cycle spent increasing")


class MLPConfig(TrainConfig):
    """Seed 000: 784-512-256-z32, LeakyReLU(0.2), linear KL warm-up over 25 of 50 epochs."""
    hidden: tuple[PositiveInt, ...] = Field((512, 256), strict=False, min_length=1)
    activation: Activation = "leaky_relu"
    negative_slope: float = Field(0.2, ge=0, lt=1, allow_inf_nan=False)
    latent_dim: int = Field(32, ge=1)
    epochs: int = Field(50, ge=1)
    lr: float = Field(5e-4, gt=0, le=1, allow_inf_nan=False)
    kl_schedule: KLSchedule = "linear"
    warmup_epochs: int = Field(25, ge=0, description="linear: epochs to reach beta")


class ConvConfig(TrainConfig):
    """Seed 002: 32-64 channels with BatchNorm, z16, Adam 1e-3, 25 epochs, constant KL weight."""
    channels: tuple[PositiveInt, ...] = Field((32, 64), strict=False, min_length=1)
    latent_dim: int = Field(16, ge=1)


class SweepConfig(_Section):
    """Seed 002's beta study: conv VAE with a 2-D latent on three classes.

    One model per entry of ``betas`` (a DVC matrix stage each); the other keys are shared by
    every beta. ``batch_size`` is 256, not seed 002's 128: it trains faster per image on a
    small multi-threaded CPU, for a small cost in test reconstruction (measured in
    docs/beta-sweep.md).
    """
    betas: tuple[NonNegative, ...] = Field((0.1, 0.5, 1.0), strict=False, min_length=1)
    epochs: int = Field(20, ge=1)
    latent_dim: int = Field(2, ge=1)
    # auto: the first three classes (all, if fewer); or class indices or names
    classes: Literal["auto"] | ClassList = (0, 1, 7)
    channels: tuple[PositiveInt, ...] = Field((32, 64), strict=False, min_length=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0, le=1, allow_inf_nan=False)
    gif_frames: int = Field(48, ge=2, description="frames per latent-evolution GIF")
    seed: int = Field(42, ge=0, description="the sweep's initialisation, shuffling and noise")


class VisualizeConfig(_Section):
    """The visualize stage: how many latent means the scatter plots draw and the latent walks."""
    scatter_points: int = Field(3000, ge=10, description="test latent means in PCA/t-SNE plots")
    tsne_perplexity: float = Field(30.0, gt=0, allow_inf_nan=False)
    tsne_iterations: int = Field(350, ge=250, description="scikit-learn max_iter (>= 250)")
    interpolation_steps: int = Field(10, ge=2)
    traversal_steps: int = Field(11, ge=2)
    traversal_span: float = Field(3.0, gt=0, allow_inf_nan=False,
                                  description="each latent value runs from -span to +span")


class ClassifierConfig(_Section):
    """The CNN whose penultimate layer is the feature space of FID and precision/recall."""
    channels: tuple[PositiveInt, ...] = Field((16, 32), strict=False, min_length=1)
    features: int = Field(128, ge=2, description="width of the penultimate (feature) layer")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0, le=1, allow_inf_nan=False,
                      description="Adam's starting learning rate, cosine-annealed to 0")
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    seed: int = Field(42, ge=0, description="the classifier's initialisation and shuffling")


class EvaluateConfig(_Section):
    """Sample counts of the evaluate stage; they set its cost and its noise."""
    samples: int = Field(2000, ge=100, description="images per generated set (FID, P/R); "
                                                  "the first 100 prior samples are saved")
    iwae_samples: int = Field(100, ge=1, description="K of the importance-weighted bound")
    iwae_images: int = Field(300, ge=1, description="test images the IWAE gain is measured on")
    iwae_batch: int = Field(5, ge=1, description="images per decoder call (x K latents)")
    prior_draws: int = Field(10, ge=1, description="fresh prior draws of `samples` images whose "
                                                  "spread is the standard error of FID and P/R")
    pr_neighbours: int = Field(3, ge=1, description="k of the k-NN manifolds of P/R")
    probe_images: int = Field(5000, ge=10, description="training images the probe fits on")
    silhouette_images: int = Field(2000, ge=10, description="test latents in the silhouette")
    diversity_images: int = Field(500, ge=2, description="images in each diversity mean")
    batch_size: int = Field(250, ge=1, description="images per encoder/decoder/feature call")


class Params(_Section):
    seed: int = Field(42, ge=0, description="the two VAEs' training and their evaluation")
    device: Device = "auto"
    beta: float = Field(1.0, ge=0, allow_inf_nan=False,
                        description="KL weight the main models train towards")
    data: DataConfig = DataConfig()
    mlp: MLPConfig = MLPConfig()
    conv: ConvConfig = ConvConfig()
    sweep: SweepConfig = SweepConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    visualize: VisualizeConfig = VisualizeConfig()


# --------------------------------------------------------------------------------------------
# One-line messages from pydantic's structured errors

_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
_TYPE_ERRORS = {"int_type": int, "int_from_float": int, "int_parsing": int,
                "float_type": float, "float_parsing": float, "bool_type": bool,
                "bool_parsing": bool, "string_type": str}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _field_info(loc: tuple) -> tuple[Any, Any]:
    """The pydantic FieldInfo of the field at ``loc`` (string parts only) and its item type."""
    model: Any = Params
    info = None
    for part in loc:
        if not isinstance(part, str):
            continue
        info = model.model_fields[part]
        model = info.annotation
    return info, model


def _scalar_type(annotation: Any) -> Any:
    """The scalar Python type behind an annotation: tuple[int, ...] -> int, float | None -> float."""
    args = [a for a in get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if not args:
        return annotation
    inner = args[0]
    base = get_args(inner)[0] if get_args(inner) else inner  # Annotated[int, ...] -> int
    return _scalar_type(base) if get_args(base) else base


def _bounds(info: Any, annotation: Any) -> str:
    """The allowed range of a field (or of its items) as text: '> 0 and <= 1'."""
    metadata = list(info.metadata)
    item_args = get_args(annotation)
    if item_args and hasattr(item_args[0], "__metadata__"):  # tuple[Annotated[..., Field], ...]
        for meta in item_args[0].__metadata__:
            metadata += getattr(meta, "metadata", [meta])
    lo = hi = ""
    for m in metadata:
        if isinstance(m, annotated_types.Gt):
            lo = f"> {m.gt:g}"
        elif isinstance(m, annotated_types.Ge):
            lo = f">= {m.ge:g}"
        elif isinstance(m, annotated_types.Lt):
            hi = f"< {m.lt:g}"
        elif isinstance(m, annotated_types.Le):
            hi = f"<= {m.le:g}"
    return " and ".join(p for p in (lo, hi) if p)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _message(err: dict) -> str:
    """One pydantic error as ``<dotted key> must be <allowed>, got <value>``."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    key = _dotted(loc)
    if kind == "extra_forbidden":
        section = loc[:-1]
        model = _field_info(section)[1] if section else Params
        where = _dotted(section) or "params.yaml"
        return f"unknown key {key}; allowed keys in {where}: {', '.join(model.model_fields)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{key or 'params.yaml'} must be a mapping of keys, got {value!r}"
    info, annotation = _field_info(loc)
    scalar = _scalar_type(annotation)
    if kind == "literal_error":
        choices = ", ".join(map(str, get_args(scalar) or get_args(annotation)))
        return f"{key} must be one of {choices}; got {value!r}"
    if kind in ("tuple_type", "list_type"):
        return f"{key} must be a list of {_PLURAL.get(scalar, 'values')}, got {value!r}"
    if kind == "too_short":
        return f"{key} must list at least {err['ctx']['min_length']} value(s), got {value!r}"
    if kind == "finite_number":
        return f"{key} must be a finite number, got {value!r}"
    if kind in _TYPE_ERRORS:
        return f"{key} must be {_KINDS[_TYPE_ERRORS[kind]]}, got {value!r}"
    if kind in _RANGE_ERRORS:
        shown = float(value) if scalar is float else value
        return f"{key} must be {_bounds(info, annotation)}, got {shown!r}"
    return f"{key}: {err['msg']}, got {value!r}"


def check_batch_size(key: str, batch_size: int, images: int) -> None:
    """A batch larger than the training set is a mistake (one short batch per epoch), caught
    once the stage knows the data's size, before any work."""
    if batch_size > images:
        raise ConfigError(f"{key} must be <= {images} (the training images), got {batch_size}")


def _check_pixels(data: DataConfig, name: str, likelihood: str) -> None:
    """Likelihoods that fix what a model trains on exclude data keys that change it."""
    if data.binarize == "dynamic" and (likelihood not in ("bernoulli", "gaussian")
                                       or data.dequantize):
        what = "data.dequantize: true" if data.dequantize else f"{name}.likelihood: {likelihood}"
        raise ConfigError(f"data.binarize: dynamic cannot go with {what}: binarized pixels are "
                          f"0 or 1, scored by the bernoulli (or gaussian) likelihood; set "
                          f"data.binarize: none, or that key back")
    if data.dequantize and likelihood == "discretized_logistic":
        raise ConfigError(f"data.dequantize: true cannot go with {name}.likelihood: "
                          f"discretized_logistic, which scores the 256 levels themselves; set "
                          f"data.dequantize: false")


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as loaded from params.yaml) into :class:`Params`."""
    if raw is None:
        raw = {}
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        # the first error, on one line: the stage prints it and stops
        first = exc.errors(include_url=False)[0]
        if tuple(first["loc"][:2]) == ("sweep", "classes"):  # a union: one message for both
            raise ConfigError(f"sweep.classes must be auto or a list of class indices (>= 0) "
                              f"or names, got {raw['sweep']['classes']!r}") from None
        raise ConfigError(_message(first)) from None
    for name in ("mlp", "conv"):
        section = getattr(params, name)
        _check_pixels(params.data, name, section.likelihood)
        if section.kl_schedule == "cyclical" and section.cycles > section.epochs:
            raise ConfigError(f"{name}.cycles must be <= {name}.epochs "
                              f"({section.epochs}), got {section.cycles}")
    classes = params.sweep.classes
    if classes != "auto" and len(set(classes)) != len(classes):
        raise ConfigError(f"sweep.classes must not repeat a class, got {list(params.sweep.classes)}")
    if len(set(params.sweep.betas)) != len(params.sweep.betas):
        # each beta is one DVC matrix stage, named and stored by its value
        raise ConfigError(f"sweep.betas must not repeat a value, got {list(params.sweep.betas)}")
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
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_params(raw)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def to_dict(obj: Any) -> Any:
    """A config model as plain dicts/lists (for checkpoints and JSON)."""
    if isinstance(obj, BaseModel):
        return {name: to_dict(getattr(obj, name)) for name in type(obj).model_fields}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj

