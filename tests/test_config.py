"""params.yaml validation: every rejected case names the key, the value and what is allowed."""
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from vaepipe.config import ConfigError, Params, load_params, parse_params, to_dict
# the registries add their name checks when imported, as in every stage that uses them
from vaepipe.data import catalog  # noqa: F401
from vaepipe.models import likelihoods, priors  # noqa: F401

REPO_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


def test_repo_params_parse_and_match_the_recipes():
    params = load_params(REPO_PARAMS)
    assert (params.seed, params.device, params.beta) == (42, "auto", 1.0)
    assert params.data.dataset == "fashion-mnist" and params.data.val_fraction == 0.1
    mlp, conv = params.mlp, params.conv
    assert (mlp.hidden, mlp.latent_dim, mlp.activation, mlp.negative_slope) == (
        (512, 256), 32, "leaky_relu", 0.2)
    assert (mlp.lr, mlp.epochs, mlp.kl_schedule, mlp.warmup_epochs) == (5e-4, 50, "linear", 25)
    assert (conv.channels, conv.latent_dim, conv.lr, conv.epochs, conv.kl_schedule) == (
        (32, 64), 16, 1e-3, 25, "constant")
    assert params.sweep.betas == (0.1, 0.5, 1.0) and params.sweep.classes == (0, 1, 7)


def test_every_key_of_the_models_is_in_params_yaml():
    # params.yaml documents every key: the parsed file round-trips to the same mapping
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    assert to_dict(load_params(REPO_PARAMS)) == raw


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def test_model_defaults_equal_params_yaml_key_by_key():
    # one set of defaults: a key left out of params.yaml gets the value params.yaml documents
    documented = _flatten(yaml.safe_load(REPO_PARAMS.read_text()))
    defaults = _flatten(to_dict(Params()))
    assert sorted(defaults) == sorted(documented)
    differing = {k: (defaults[k], documented[k]) for k in documented if defaults[k] != documented[k]}
    assert differing == {}


def test_empty_mapping_gives_defaults_and_configs_are_frozen():
    params = parse_params({})
    assert params == Params()
    with pytest.raises(ValidationError, match="frozen"):
        params.beta = 2.0
    with pytest.raises(ValidationError, match="frozen"):
        params.mlp.epochs = 3


REJECTED = [
    ({"data": {"dataset": "fashion"}},
     "data.dataset must be one of fashion-mnist, mnist, cifar10, folder; got 'fashion'"),
    ({"device": "gpu"}, "device must be one of auto, cpu, cuda, mps; got 'gpu'"),
    ({"bogus": 1}, "unknown key bogus; allowed keys in params.yaml: seed, device, beta, data"),
    ({"mlp": {"hiden": [1]}}, "unknown key mlp.hiden; allowed keys in mlp: likelihood"),
    ({"beta": -0.5}, "beta must be >= 0, got -0.5"),
    ({"beta": "one"}, "beta must be a number, got 'one'"),
    ({"beta": float("nan")}, "beta must be a finite number, got nan"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"seed": True}, "seed must be an integer, got True"),
    ({"data": {"val_fraction": 0}}, "data.val_fraction must be > 0 and < 1, got 0.0"),
    ({"data": {"val_fraction": 1.0}}, "data.val_fraction must be > 0 and < 1, got 1.0"),
    ({"data": {"mirror": 3}}, "data.mirror must be a string, got 3"),
    ({"data": {"dequantize": "yes"}}, "data.dequantize must be true or false, got 'yes'"),
    ({"data": "fashion-mnist"}, "data must be a mapping of keys, got 'fashion-mnist'"),
    ({"mlp": {"epochs": 0}}, "mlp.epochs must be >= 1, got 0"),
    ({"mlp": {"lr": 0}}, "mlp.lr must be > 0 and <= 1, got 0.0"),
    ({"mlp": {"lr": float("inf")}}, "mlp.lr must be a finite number, got inf"),
    ({"mlp": {"hidden": []}}, "mlp.hidden must list at least 1 value(s), got []"),
    ({"mlp": {"hidden": 512}}, "mlp.hidden must be a list of integers, got 512"),
    ({"mlp": {"hidden": [512, "a"]}}, "mlp.hidden[1] must be an integer, got 'a'"),
    ({"mlp": {"hidden": [512, 0]}}, "mlp.hidden[1] must be >= 1, got 0"),
    ({"mlp": {"activation": "gelu"}}, "mlp.activation must be one of relu, leaky_relu; got 'gelu'"),
    ({"mlp": {"negative_slope": 1.0}}, "mlp.negative_slope must be >= 0 and < 1, got 1.0"),
    ({"conv": {"likelihood": "mse"}},
     "conv.likelihood must be one of bernoulli, gaussian, continuous_bernoulli, discretized_logistic; got 'mse'"),
    ({"conv": {"obs_std": 0}}, "conv.obs_std must be > 0, got 0.0"),
    ({"conv": {"optimizer": "sgd"}}, "conv.optimizer must be one of adam, adamw, adamnormgrad; got 'sgd'"),
    ({"conv": {"grad_clip": -1}}, "conv.grad_clip must be >= 0, got -1.0"),
    ({"conv": {"kl_schedule": "sigmoid"}},
     "conv.kl_schedule must be one of constant, linear, cyclical; got 'sigmoid'"),
    ({"conv": {"cycle_ratio": 0}}, "conv.cycle_ratio must be > 0 and <= 1, got 0.0"),
    ({"conv": {"epochs": 3, "kl_schedule": "cyclical", "cycles": 4}},
     "conv.cycles must be <= conv.epochs (3), got 4"),
    ({"sweep": {"classes": [0, -1]}}, "sweep.classes must be auto or a list of class indices "
                                          "(>= 0) or names, got [0, -1]"),
    ({"sweep": {"classes": []}}, "sweep.classes must be auto or a list of class indices (>= 0) "
                                 "or names, got []"),
    ({"sweep": {"classes": "all"}}, "sweep.classes must be auto or a list of class indices "
                                    "(>= 0) or names, got 'all'"),
    ({"data": {"image_size": 48}}, "data.image_size must be one of 28, 32, 64; got 48"),
    ({"data": {"channels": 2}}, "data.channels must be one of auto, 1, 3; got 2"),
    ({"data": {"test_fraction": 0}}, "data.test_fraction must be > 0 and < 1, got 0.0"),
    ({"sweep": {"classes": [1, 1]}}, "sweep.classes must not repeat a class, got [1, 1]"),
    ({"sweep": {"betas": [0.1, -1]}}, "sweep.betas[1] must be >= 0, got -1.0"),
    ({"sweep": {"betas": []}}, "sweep.betas must list at least 1 value(s), got []"),
    ({"sweep": {"betas": [0.5, 1, 0.5]}}, "sweep.betas must not repeat a value, got [0.5, 1.0, 0.5]"),
    ({"sweep": {"betas": [1, 1.0]}}, "sweep.betas must not repeat a value, got [1.0, 1.0]"),
    ({"sweep": {"betas": 0.5}}, "sweep.betas must be a list of numbers, got 0.5"),
    ({"sweep": {"betas": [0.1, "x"]}}, "sweep.betas[1] must be a number, got 'x'"),
    ({"sweep": {"channels": []}}, "sweep.channels must list at least 1 value(s), got []"),
    ({"sweep": {"channels": [32, 0]}}, "sweep.channels[1] must be >= 1, got 0"),
    ({"sweep": {"batch_size": 0}}, "sweep.batch_size must be >= 1, got 0"),
    ({"sweep": {"lr": 0}}, "sweep.lr must be > 0 and <= 1, got 0.0"),
    ({"sweep": {"gif_frames": 1}}, "sweep.gif_frames must be >= 2, got 1"),
    ({"sweep": {"gif_frame": 10}}, "unknown key sweep.gif_frame; allowed keys in sweep: betas"),
    ({"sweep": {"optimizer": "adam"}}, "unknown key sweep.optimizer; allowed keys in sweep: betas"),
    ({"classifier": {"channels": []}}, "classifier.channels must list at least 1 value(s), got []"),
    ({"classifier": {"channels": [16, 0]}}, "classifier.channels[1] must be >= 1, got 0"),
    ({"classifier": {"features": 1}}, "classifier.features must be >= 2, got 1"),
    ({"classifier": {"epochs": 0}}, "classifier.epochs must be >= 1, got 0"),
    ({"classifier": {"lr": 2}}, "classifier.lr must be > 0 and <= 1, got 2.0"),
    ({"classifier": {"beta": 1.0}}, "unknown key classifier.beta; allowed keys in classifier: "
                                    "channels, features, epochs"),
    ({"evaluate": {"samples": 99}}, "evaluate.samples must be >= 100, got 99"),
    ({"evaluate": {"iwae_samples": 0}}, "evaluate.iwae_samples must be >= 1, got 0"),
    ({"evaluate": {"iwae_batch": "50"}}, "evaluate.iwae_batch must be an integer, got '50'"),
    ({"evaluate": {"pr_neighbours": 2.5}}, "evaluate.pr_neighbours must be an integer, got 2.5"),
    ({"evaluate": {"diversity_images": 1}}, "evaluate.diversity_images must be >= 2, got 1"),
    ({"evaluate": {"k": 3}}, "unknown key evaluate.k; allowed keys in evaluate: samples, "
                             "iwae_samples"),
]


@pytest.mark.parametrize("raw,message", REJECTED, ids=[m.split(" ")[0] for _, m in REJECTED])
def test_rejected_values_name_key_value_and_allowed(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    assert message in str(info.value)


def test_a_key_that_sections_share_takes_the_same_values_in_each():
    # channels, lr, batch_size, epochs, seed...: one definition, only the default differs
    sections = Params.model_json_schema()["$defs"]
    rules: dict[str, dict] = {}
    for name in ("MLPConfig", "ConvConfig", "SweepConfig", "ClassifierConfig"):
        for key, schema in sections[name]["properties"].items():
            rule = {k: v for k, v in schema.items() if k not in ("default", "description", "title")}
            assert rules.setdefault(key, rule) == rule, f"{name}.{key}"
    assert {"channels", "lr", "batch_size", "epochs", "latent_dim", "seed"} <= rules.keys()


def test_load_params_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml not found"):
        load_params(tmp_path / "nowhere.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml is not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="params.yaml must be a mapping of keys"):
        load_params(bad)


def test_ints_are_accepted_for_floats_and_lists_become_tuples():
    params = parse_params({"beta": 1, "mlp": {"hidden": [64]}, "sweep": {"betas": [1, 2]}})
    assert params.beta == 1.0 and isinstance(params.beta, float)
    assert params.mlp.hidden == (64,) and params.sweep.betas == (1.0, 2.0)


def test_exponent_without_dot_is_a_float(tmp_path):
    # `dvc exp run -S conv.weight_decay=1e-5` writes `1e-05`, a string to YAML 1.1 loaders
    path = tmp_path / "params.yaml"
    path.write_text("beta: 1e-3\nconv:\n  weight_decay: 1e-05\n  lr: 2E-1\nmlp:\n  lr: 5.0e-4\n")
    params = load_params(path)
    assert params.beta == 1e-3 and params.conv.weight_decay == 1e-5
    assert params.conv.lr == 0.2 and params.mlp.lr == 5e-4
    path.write_text("data:\n  mirror: 1e5x\n")
    assert load_params(path).data.mirror == "1e5x"  # not a number: stays a string


def test_make_quick_overrides_are_valid_params_that_shorten_every_training():
    makefile = (REPO_PARAMS.parent / "Makefile").read_text()
    block = makefile.split("QUICK_PARAMS :=", 1)[1].split("\n\n", 1)[0]
    overrides = dict(pair.split("=", 1) for pair in re.findall(r"-S (\S+)", block))
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = yaml.safe_load(value)
    quick, full = parse_params(raw), load_params(REPO_PARAMS)
    for section in ("mlp", "conv", "sweep", "classifier"):
        assert getattr(quick, section).epochs < getattr(full, section).epochs
    assert quick.mlp.warmup_epochs <= quick.mlp.epochs  # the warm-up still reaches beta
