"""Typed, frozen view of params.yaml, validated by pydantic v2.

Every stage parses params.yaml once, here, before doing any work. The models below hold the
recipes as their defaults (recipe 000 for ``mlp``, recipe 002 for ``conv`` and ``sweep``),
so a key left out of params.yaml gets the same value params.yaml documents. An unknown key, a
value of the wrong type or one outside its allowed range raises :class:`ConfigError` with one
line that names the dotted key, the value given and what is allowed, for example
``data.dataset must be one of fashion-mnist, mnist, cifar10, folder; got 'fashion'``. Library code
never opens params.yaml; stages pass these objects (or plain values from them) down.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Device = Literal["auto", "cpu", "cuda", "mps"]
Activation = Literal["relu", "leaky_relu"]
Binarize = Literal["none", "dynamic"]
Optimizer = Literal["adam", "adamw", "adamnormgrad"]
SplitOrder = Literal["seeded", "file"]
KLEstimate = Literal["closed_form", "single_sample"]
KLSchedule = Literal["constant", "linear", "cyclical"]

# strict=True: no silent coercion ("1" is not 1, true is not 1); a float field still takes an
# int. Lists are parsed leniently (YAML gives lists, the models keep tuples) but their items
# stay strict.
NonNegative = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
LearningRate = Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)]
# layer widths: an MLP's hidden units, a CNN's channels
Widths = Annotated[tuple[PositiveInt, ...], Field(strict=False, min_length=1)]
# classes by index or by name (a folder's class names are its sub-folders' names)
ClassList = Annotated[tuple[NonNegativeInt | str, ...], Field(strict=False, min_length=1)]


class ConfigError(ValueError):
    """A params value that is unknown, of the wrong type or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Section):
    # a name of vaepipe.data.catalog.DATASETS, or folder (checked by the catalog's registered check)
    dataset: str = "fashion-mnist"
    mirror: str | None = Field(None, description="a directory holding the dataset's files")
    val_fraction: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False)
    split_seed: int = Field(42, ge=0)
    split_order: SplitOrder = Field("seeded", description="seeded: a seeded random validation "
                                    "split; file: the last images in file order")
    dequantize: bool = Field(False, description="add U[0,1) noise to the 8-bit pixels")
    binarize: Binarize = Field("none", description="dynamic: Bernoulli pixels drawn anew each "
                                                   "training epoch, once for validation/test")
    binarize_seed: int | None = Field(None, ge=0, description="the fixed binarization of "
                                      "validation and test: null, a seeded draw per split; an "
                                      "integer, numpy's legacy RandomState(seed) drawing "
                                      "validation then test, as the VampPrior code does")
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

    The defaults here are recipe 002's (the conv VAE); :class:`MLPConfig` overrides those
    that recipe 000 sets differently.
    """
    # names of vaepipe.models.likelihoods.LIKELIHOODS and vaepipe.models.priors.PRIORS (their
    # registered checks); obs_std is the gaussian likelihood's own parameter
    likelihood: str = "bernoulli"
    obs_std: float = Field(1.0, gt=0, allow_inf_nan=False,
                           description="fixed pixel standard deviation of the gaussian likelihood")
    prior: str = "standard_normal"
    pseudo_inputs: PositiveInt = Field(500, description="vampprior only: learned pseudo-inputs "
                                       "(the VampPrior authors' code: 500)")
    kl_estimate: KLEstimate = Field("closed_form", description="closed_form where the prior has "
                                    "one; single_sample: log q(z|x) - log p(z) at the draw")
    levels: Literal[1, 2] = Field(1, description="stochastic levels: 2 is the HVAE's "
                                  "q(z2|x) q(z1|x,z2), p(z2) p(z1|z2) p(x|z1,z2)")
    gated: bool = Field(False, description="gated layers (h = Wx * sigmoid(Vx)), a logvar head "
                        "bounded to [-6, 2] and He-initialised weights, as the VampPrior code")
    epochs: PositiveInt = 25
    batch_size: PositiveInt = 128
    optimizer: Optimizer = "adam"
    lr: LearningRate = 1e-3
    weight_decay: NonNegative = 0.0
    grad_clip: NonNegative = Field(0.0, description="max gradient norm; 0 disables clipping")
    patience: NonNegativeInt = Field(0, description="stop once more than this many epochs in a "
                                     "row, from the warm-up's end on, brought no better "
                                     "validation loss; epochs is then the maximum; 0: off")
    kl_schedule: KLSchedule = "constant"
    warmup_epochs: NonNegativeInt = Field(0, description="linear: epochs to reach beta")
    cycles: PositiveInt = Field(4, description="cyclical: number of cycles over the run")
    cycle_ratio: float = Field(0.5, gt=0, le=1, allow_inf_nan=False,
                               description="cyclical: fraction of each cycle spent increasing")


def warmup_end(cfg: TrainConfig) -> int:
    """The last epoch of the linear KL warm-up (0 for the other schedules): early stopping
    counts epochs from it on."""
    return cfg.warmup_epochs if cfg.kl_schedule == "linear" else 0


class MLPConfig(TrainConfig):
    """Recipe 000: 784-512-256-z32, LeakyReLU(0.2), linear KL warm-up over 25 of 50 epochs."""
    hidden: Widths = (512, 256)
    activation: Activation = "leaky_relu"
    negative_slope: float = Field(0.2, ge=0, lt=1, allow_inf_nan=False)
    latent_dim: PositiveInt = 32
    epochs: PositiveInt = 50
    lr: LearningRate = 5e-4
    kl_schedule: KLSchedule = "linear"
    warmup_epochs: NonNegativeInt = Field(25, description="linear: epochs to reach beta")


class ConvConfig(TrainConfig):
    """Recipe 002: 32-64 channels with BatchNorm, z16, Adam 1e-3, 25 epochs, constant KL weight."""
    channels: Widths = (32, 64)
    latent_dim: PositiveInt = 16


class SweepConfig(_Section):
    """Recipe 002's beta study: conv VAE with a 2-D latent on three classes.

    One model per entry of ``betas`` (a DVC matrix stage each); the other keys are shared by
    every beta. ``batch_size`` is 256, not recipe 002's 128: it trains faster per image on a
    small multi-threaded CPU, for a small cost in test reconstruction (measured in
    docs/beta-sweep.md).
    """
    betas: tuple[NonNegative, ...] = Field((0.1, 0.5, 1.0), strict=False, min_length=1)
    epochs: PositiveInt = 20
    latent_dim: PositiveInt = 2
    # auto: the first three classes (all, if fewer); or class indices or names
    classes: Literal["auto"] | ClassList = (0, 1, 7)
    channels: Widths = (32, 64)
    batch_size: PositiveInt = 256
    lr: LearningRate = 1e-3
    gif_frames: int = Field(48, ge=2, description="frames per latent-evolution GIF")
    seed: NonNegativeInt = Field(42, description="the sweep's initialisation, shuffling and noise")


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
    channels: Widths = (16, 32)
    features: int = Field(128, ge=2, description="width of the penultimate (feature) layer")
    epochs: PositiveInt = 4
    batch_size: PositiveInt = 128
    lr: LearningRate = Field(3e-3,
                             description="Adam's starting learning rate, cosine-annealed to 0")
    weight_decay: NonNegative = 0.0
    seed: NonNegativeInt = Field(42, description="the classifier's initialisation and shuffling")


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
    # model -> K: the literature's test NLL (5000 there), only where it is asked for
    nll_samples: dict[str, NonNegativeInt] = Field(
        default_factory=lambda: {"mlp": 0, "conv": 0},
        description="per model, K importance samples of the test NLL of its best checkpoint "
                    "over the whole test set; 0: not computed")
    batch_size: int = Field(250, ge=1, description="images per encoder/decoder/feature call")


class Params(_Section):
    seed: NonNegativeInt = Field(42, description="the two VAEs' training and their evaluation")
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

# pydantic's error types -> what the value must be; the JSON schema's bounds as written here
_KINDS = {"int_type": "an integer", "float_type": "a number", "finite_number": "a finite number",
          "bool_type": "true or false", "string_type": "a string",
          "model_type": "a mapping of keys", "dict_type": "a mapping of keys"}
_BOUNDS = {"exclusiveMinimum": ">", "minimum": ">=", "exclusiveMaximum": "<", "maximum": "<="}


def _schema(loc: tuple) -> dict:
    """The JSON schema of the section, key or list item at ``loc`` of :class:`Params`."""
    root = schema = Params.model_json_schema()
    for part in loc:
        schema = (schema["items"] if isinstance(part, int) else
                  schema["properties"][part] if "properties" in schema else
                  schema["additionalProperties"])
        schema = root["$defs"].get(schema.get("$ref", "").rsplit("/", 1)[-1], schema)
    return schema


def _dotted(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _message(err: dict) -> str:
    """One pydantic error as ``<dotted key> must be <allowed>, got <value>``."""
    loc, kind, value = tuple(err["loc"]), err["type"], err["input"]
    key = _dotted(loc) or "params.yaml"
    if kind == "extra_forbidden":
        allowed = ", ".join(_schema(loc[:-1])["properties"])
        return f"unknown key {key}; allowed keys in {_dotted(loc[:-1]) or 'params.yaml'}: {allowed}"
    if kind in _KINDS:
        return f"{key} must be {_KINDS[kind]}, got {value!r}"
    if kind == "too_short":
        return f"{key} must list at least {err['ctx']['min_length']} value(s), got {value!r}"
    schema = _schema(loc)
    if kind == "literal_error":
        return f"{key} must be one of {', '.join(map(str, schema['enum']))}; got {value!r}"
    if kind == "tuple_type":
        return f"{key} must be a list of {schema['items'].get('type', 'value')}s, got {value!r}"
    if kind.startswith(("greater_than", "less_than")):
        bounds = " and ".join(f"{op} {schema[k]:g}" for k, op in _BOUNDS.items() if k in schema)
        shown = float(value) if schema.get("type") == "number" else value
        return f"{key} must be {bounds}, got {shown!r}"
    return f"{key}: {err['msg']}, got {value!r}"


def check_batch_size(key: str, batch_size: int, images: int) -> None:
    """A batch larger than the training set is a mistake (one short batch per epoch), caught
    once the stage knows the data's size, before any work."""
    if batch_size > images:
        raise ConfigError(f"{key} must be <= {images} (the training images), got {batch_size}")


# Checks of names that registries define (datasets, likelihoods, priors). This module imports
# no package, so each registry adds its check when it is imported: a stage that uses a registry
# checks its names before any work, and a name registered later (a test's) still validates.
_REGISTERED_CHECKS: list[Callable[["Params"], None]] = []


def register_check(check: Callable[["Params"], None]) -> Callable[["Params"], None]:
    """Run ``check(params)`` in every later :func:`parse_params`; it raises ConfigError."""
    if check not in _REGISTERED_CHECKS:
        _REGISTERED_CHECKS.append(check)
    return check


def check_name(key: str, value: str, registry) -> None:
    """``value`` must be a key of ``registry``: one line naming ``key`` and the choices."""
    if value not in registry:
        raise ConfigError(f"{key} must be one of {', '.join(registry)}; got {value!r}")


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
        if section.kl_schedule == "cyclical" and section.cycles > section.epochs:
            raise ConfigError(f"{name}.cycles must be <= {name}.epochs "
                              f"({section.epochs}), got {section.cycles}")
    classes = params.sweep.classes
    if classes != "auto" and len(set(classes)) != len(classes):
        raise ConfigError(f"sweep.classes must not repeat a class, got {list(params.sweep.classes)}")
    if len(set(params.sweep.betas)) != len(params.sweep.betas):
        # each beta is one DVC matrix stage, named and stored by its value
        raise ConfigError(f"sweep.betas must not repeat a value, got {list(params.sweep.betas)}")
    for check in _REGISTERED_CHECKS:
        check(params)
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

