"""Loading and validating the infodissect configuration.

The configuration is checked in two steps:

1. against the JSON schema in ``src/infodissect/schemas/config.schema.yaml`` (types,
   ranges, unknown keys), filling in every ``default`` the schema declares;
2. against semantic rules JSON schema cannot express (``min <= neutral <=
   max``, the face model's hard factor bounds, categorical level subsets,
   ``shard_size`` a multiple of ``batch_size``, known factor names, ...).

Every failure raises :class:`ConfigError` whose message starts with the dotted
path of the offending key, e.g. ``stimuli.render.resolution: 0 is less than
the minimum of 8``.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

from infodissect.faces.factors import FACTORS

__all__ = [
    "ConfigError",
    "schema_path",
    "load_schema",
    "schema_default",
    "validate_config",
    "load_config",
    "parse_model_name",
]

SET_NAME = re.compile(r"[a-z][a-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the dotted key path."""


def schema_path() -> Path:
    """Path of the config JSON schema, package data of ``infodissect`` (``schemas/config.schema.yaml``),
    so an installed wheel validates configs as the repository does."""
    return Path(str(resources.files("infodissect") / "schemas" / "config.schema.yaml"))


@lru_cache(maxsize=1)
def _cached_schema() -> dict:
    path = schema_path()
    if not path.is_file():
        raise FileNotFoundError(f"config schema not found at {path}")
    with path.open() as fh:
        return yaml.safe_load(fh)


def load_schema() -> dict:
    """Return the config JSON schema as a dict (a fresh copy on every call)."""
    return copy.deepcopy(_cached_schema())


def schema_default(key: str) -> Any:
    """The schema's default of a dotted config key (``analyses.pose_bins``); the one place defaults live."""
    node: dict = _cached_schema()
    for part in key.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise ConfigError(f"{key}: no such config key in the schema") from None
    if "default" not in node:
        raise ConfigError(f"{key}: the schema gives it no default; set it")
    return copy.deepcopy(node["default"])


def _extend_with_default(validator_class: type) -> type:
    """Extend a jsonschema validator class to fill in ``default`` values.

    Defaults are set on an object before its properties are validated, so a
    default object (e.g. ``{}``) gets its own properties' defaults in turn.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, Mapping) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_default(jsonschema.Draft202012Validator)


def _dotted(path: Iterable[Any]) -> str:
    """Format a key path as ``a.b[3].c``; the root is ``config``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "config"


def _join(path: str, key: str) -> str:
    return key if path == "config" else f"{path}.{key}"


def _format_schema_error(error: ValidationError) -> str:
    path = _dotted(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        key = extra[0] if extra else "?"
        if path == "stimuli.factors":
            if key == "identity":
                return (
                    f"{_join(path, key)}: identity has no entry here; it is drawn "
                    "from the pool of stimuli.identities"
                )
            return f"{_join(path, key)}: unknown factor (known: {', '.join(allowed)})"
        return f"{_join(path, str(key))}: unknown key (allowed: {', '.join(allowed)})"
    return f"{path}: {error.message}"


def _numbers_from_strings(value: Any) -> Any:
    """Return ``value`` with strings that spell a number replaced by that number.

    Snakemake parses nested ``--config`` values (``--config 'stimuli={render:
    {resolution: 32}}'``) with YAML's base loader, which leaves every scalar a
    string. No string-valued key of the config can hold a number, so reading
    such strings as numbers is safe.
    """
    if isinstance(value, Mapping):
        return {key: _numbers_from_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers_from_strings(item) for item in value]
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            return int(text)
        if _NUMBER.fullmatch(text):
            return float(text)
    return value


def parse_model_name(name: str) -> tuple[str, int]:
    """``identity_s0`` -> (``identity``, 0)."""
    task, sep, seed = name.rpartition("_s")
    if not sep or not task or not seed.isdigit():
        raise ValueError(f"model name {name!r} is not '<task>_s<seed>' (e.g. identity_s0)")
    return task, int(seed)


def _semantic_errors(config: dict) -> Iterator[str]:
    """Yield messages for semantic errors of a schema-valid, defaults-filled config."""
    stimuli = config["stimuli"]

    for name, entry in stimuli["factors"].items():
        path = f"stimuli.factors.{name}"
        factor = FACTORS[name]
        if factor.kind == "continuous":
            lo, hi, neutral = entry["min"], entry["max"], entry["neutral"]
            blo, bhi = factor.bounds
            if lo > hi:
                yield f"{path}: min ({lo}) is greater than max ({hi})"
            elif not lo <= neutral <= hi:
                yield f"{path}: neutral ({neutral}) is outside [min, max] = [{lo}, {hi}]"
            if lo < blo:
                yield f"{path}.min: {lo} is below the model's bound {blo}"
            if hi > bhi:
                yield f"{path}.max: {hi} is above the model's bound {bhi}"
        else:
            levels = entry["levels"]
            for i, level in enumerate(levels):
                if level not in factor.levels:
                    yield (
                        f"{path}.levels[{i}]: unknown level {level!r} "
                        f"(allowed: {', '.join(factor.levels)})"
                    )
            if entry["neutral"] not in levels:
                yield f"{path}.neutral: {entry['neutral']!r} is not one of levels {levels}"
            weights = entry.get("weights")
            if weights is not None and len(weights) != len(levels):
                yield (
                    f"{path}.weights: {len(weights)} weights for {len(levels)} levels "
                    "(need one per level)"
                )
            if weights is not None and any(w <= 0 for w in weights):
                yield f"{path}.weights: weights must be positive"

    render = stimuli["render"]
    if render["shard_size"] % render["batch_size"]:
        yield (
            f"stimuli.render.shard_size: {render['shard_size']} is not a multiple of "
            f"stimuli.render.batch_size ({render['batch_size']})"
        )

    for name, spec in stimuli["sets"].items():
        path = f"stimuli.sets.{name}"
        if not SET_NAME.fullmatch(name):
            yield f"{path}: set name must match [a-z][a-z0-9_]*"
        design = spec["design"]
        pool_key = "stimuli.identities"
        pool = stimuli["identities"]
        if spec.get("pool") == "heldout":
            pool_key, pool = "stimuli.heldout_identities", stimuli["heldout_identities"]
            from infodissect.stimuli.design import HELDOUT_DESIGNS  # (xarray: imported only when needed)

            if design not in HELDOUT_DESIGNS:
                yield (f"{path}.pool: a {design} set cannot draw from the held-out pool (its analyses read an "
                       f"identity network's logit for each identity); pool: heldout is for "
                       f"{', '.join(HELDOUT_DESIGNS)} sets")
                continue
            if pool < 1:
                yield (f"{path}.pool: heldout needs held-out identities, but stimuli.heldout_identities is 0 "
                       "(set it to the size of the held-out pool)")
                continue
        for key in ("vary", "factors"):
            for i, factor in enumerate(spec.get(key, [])):
                if factor not in FACTORS:
                    yield f"{path}.{key}[{i}]: unknown factor {factor!r}"
                elif key == "factors" and factor == "identity":
                    yield f"{path}.{key}[{i}]: identity cannot be swept"
        if design == "morph" and not spec["levels"]:
            yield f"{path}.levels: at least one morph level is needed"
        if design == "morph" and pool < 2:
            yield f"{path}: a morph set needs stimuli.identities >= 2 (it is {pool})"
        if design in ("sweep", "revcorr") and spec["identities"] > pool:
            yield (
                f"{path}.identities: {spec['identities']} is more than the identity "
                f"pool ({pool_key} = {pool})"
            )


    yield from _training_errors(config)
    yield from _analysis_errors(config)


def _analysis_errors(config: dict) -> Iterator[str]:
    """Semantic errors of the ``activations``, ``mi`` and ``analyses`` sections."""
    readout = load_schema()["properties"]["activations"]["properties"]["layers"]["items"]["enum"]
    for key in config["activations"]["pooling"]:
        if key != "default" and key not in readout:
            yield (f"activations.pooling.{key}: not a layer; keys are `default` and the read-out layers "
                   f"({', '.join(readout)})")
    if not config["training"]["models"]:
        return
    sets, extracted = config["stimuli"]["sets"], config["activations"]["sets"]
    trained = config["training"]["models"]
    for i, model in enumerate(config["activations"]["models"]):
        if model not in trained:
            yield (f"activations.models[{i}]: {model!r} is not among training.models ({', '.join(trained)}); "
                   "list trained models, or [] for every one of them")
    attacked = adversarial_set_names(config)
    for i, name in enumerate(extracted):
        if name not in sets and name not in attacked:
            yield (f"activations.sets[{i}]: {name!r} is not a stimulus set (nor an adversarial set "
                   f"{{set}}_adv_{{budget}} of adversarial.sets and adversarial.budgets)")
    for i, name in enumerate(config["mi"]["sets"]):
        if name not in extracted:
            yield f"mi.sets[{i}]: {name!r} is not among activations.sets ({', '.join(extracted)})"
    for i, layer in enumerate(config["mi"]["layers"]):
        if layer not in config["activations"]["layers"]:
            yield f"mi.layers[{i}]: {layer!r} is not among activations.layers"
    for key, design in (("morph_set", "morph"), ("revcorr_set", "revcorr")):
        name = config["analyses"][key]
        if not name:
            continue
        if name not in extracted:
            yield f"analyses.{key}: {name!r} is not among activations.sets ({', '.join(extracted)})"
        elif sets[name]["design"] != design:
            yield f"analyses.{key}: {name!r} is a {sets[name]['design']!r} set, not a {design} set"
    pose = config["analyses"]["pose_set"]
    if pose:
        if pose not in extracted:
            yield f"analyses.pose_set: {pose!r} is not among activations.sets ({', '.join(extracted)})"
        else:
            vary = sets[pose].get("vary", [])
            missing = [f for f in ("identity", config["analyses"]["pose_factor"]) if f not in vary]
            if missing:
                yield f"analyses.pose_set: {pose!r} does not vary {missing} (its vary list)"
    yield from _dissection_errors(config, readout)
    yield from _relevance_errors(config)
    yield from _adversarial_errors(config)
    for i, model in enumerate(config["training"]["adversarial"]["models"]):
        if model not in config["training"]["models"]:
            yield (f"training.adversarial.models[{i}]: {model!r} is not among training.models "
                   f"({', '.join(config['training']['models'])})")
    scheduler = config["mi"]["scheduler"]
    if scheduler not in ("local", "synchronous", "threads") and "://" not in scheduler:
        yield f"mi.scheduler: {scheduler!r} is not local, synchronous, threads or an address tcp://host:port"


def _relevance_errors(config: dict) -> Iterator[str]:
    """Semantic errors of the ``relevance`` section (its sets, models and methods)."""
    r, sets, trained = config["relevance"], config["stimuli"]["sets"], config["training"]["models"]
    for i, name in enumerate(r["sets"]):
        if name not in sets:
            yield f"relevance.sets[{i}]: {name!r} is not a stimulus set ({', '.join(sets)})"
    for i, model in enumerate(r["models"]):
        if model not in trained:
            yield f"relevance.models[{i}]: {model!r} is not among training.models ({', '.join(trained)})"
    for i, method in enumerate(r["masking_methods"]):
        if method not in r["methods"]:
            yield f"relevance.masking_methods[{i}]: {method!r} is not among relevance.methods ({', '.join(r['methods'])})"
    size = config["stimuli"]["render"]["resolution"]
    if r["sets"] and size % r["patch"]:
        yield f"relevance.patch: {r['patch']} does not divide the image size {size} (stimuli.render.resolution)"


def adversarial_set_names(config: dict) -> list[str]:
    """The adversarial stimulus sets a (validated) config makes: ``{set}_adv_{budget}`` for every attacked set
    and budget."""
    a = config["adversarial"]
    return [f"{s}_adv_{b}" for s in a["sets"] for b in a["budgets"]]


def analysed_models(config: dict) -> list[str]:
    """The models whose activations, MI and analyses are run: ``activations.models``, or every trained model."""
    trained = list(config["training"]["models"])
    return [m for m in config["activations"]["models"] if m in trained] or trained


def adversarial_models(config: dict) -> tuple[list[str], list[str]]:
    """The ensemble the adversarial stage attacks and the models its transfer is measured on.

    ``adversarial.models`` ([] = the analysed models of the first one's task) and
    ``adversarial.transfer`` ([] = every other trained model of the ensemble's task)."""
    a, trained = config["adversarial"], list(config["training"]["models"])
    analysed = analysed_models(config)
    ensemble = list(a["models"]) or [m for m in analysed if analysed and
                                     parse_model_name(m)[0] == parse_model_name(analysed[0])[0]]
    if a["transfer"]:
        return ensemble, list(a["transfer"])
    tasks = {parse_model_name(m)[0] for m in ensemble if m in trained}
    return ensemble, [m for m in trained if m not in ensemble and parse_model_name(m)[0] in tasks]


def consistency_models(config: dict) -> list[str]:
    """The analysed models whose units the adversarial consistency stage measures: those of the attack's task
    (its targets are classes of that task)."""
    tasks = {parse_model_name(m)[0] for m in adversarial_models(config)[0]}
    return [m for m in analysed_models(config) if parse_model_name(m)[0] in tasks]


def _adversarial_errors(config: dict) -> Iterator[str]:
    """Semantic errors of the ``adversarial`` section (its sets and models: one task, transfer left out)."""
    a, sets, trained = config["adversarial"], config["stimuli"]["sets"], config["training"]["models"]
    for i, name in enumerate(a["sets"]):
        if name not in sets:
            yield f"adversarial.sets[{i}]: {name!r} is not a stimulus set ({', '.join(sets)})"
    for key in ("models", "transfer"):
        for i, model in enumerate(a[key]):
            if model not in trained:
                yield f"adversarial.{key}[{i}]: {model!r} is not among training.models ({', '.join(trained)})"
    ensemble, transfer = adversarial_models(config)
    tasks = sorted({parse_model_name(m)[0] for m in [*ensemble, *transfer] if m in trained})
    if a["sets"] and len(tasks) > 1:
        yield (f"adversarial.models / transfer: {tasks} are different tasks; an ensemble and its transfer "
               "models must share one")
    for name in adversarial_set_names(config):
        if name in sets:
            yield f"adversarial: the adversarial set {name!r} has the name of a set of stimuli.sets; rename that set"
    for i, model in enumerate(a["transfer"]):
        if model in ensemble:
            yield (f"adversarial.transfer[{i}]: {model!r} is in the ensemble (adversarial.models); transfer is to "
                   "models left out")


def _dissection_errors(config: dict, readout: list[str]) -> Iterator[str]:
    """Semantic errors of the ``dissection`` section (its sets, layers and image-level factors)."""
    d, sets, extracted = config["dissection"], config["stimuli"]["sets"], config["activations"]["sets"]
    pooling = config["activations"]["pooling"]
    maps = [layer for layer in config["activations"]["layers"] or readout if layer not in ("pool", "logits")
            and pooling.get(layer, pooling.get("default", "full")) == "full"]
    for i, name in enumerate(d["sets"]):
        if name not in extracted:
            yield f"dissection.sets[{i}]: {name!r} is not among activations.sets ({', '.join(extracted)})"
    for i, layer in enumerate(d["layers"]):
        if layer not in maps:
            yield (f"dissection.layers[{i}]: {layer!r} is not a layer extracted as full maps "
                   f"({', '.join(maps) or 'none'}; see activations.layers and activations.pooling)")
    if d["sets"] and not maps:
        yield "dissection.sets: no layer is extracted as full maps (activations.pooling); set dissection.sets: []"
    if d["rotation_layer"] not in ("", "auto") and d["rotation_alphas"] and \
            d["rotation_layer"] not in (d["layers"] or maps):
        yield (f"dissection.rotation_layer: {d['rotation_layer']!r} is not a dissected layer "
               f"({', '.join(d['layers'] or maps)}; auto = the one with the most detectors, '' = none)")
    categorical = [n for n, f in FACTORS.items() if f.kind != "continuous" and n != "identity"]
    for i, factor in enumerate(d["image_factors"]):
        if factor not in categorical:
            yield f"dissection.image_factors[{i}]: {factor!r} is not a categorical factor ({', '.join(categorical)})"
        else:
            for name in d["sets"]:
                if name in sets and factor not in sets[name].get("vary", []):
                    yield f"dissection.image_factors[{i}]: {factor!r} does not vary in set {name!r} (its vary list)"


def _training_errors(config: dict) -> Iterator[str]:
    """Semantic errors of the ``training`` section."""
    training, sets = config["training"], config["stimuli"]["sets"]
    if not training["models"]:
        return
    for key in ("train_set", "test_set"):
        if training[key] not in sets:
            yield f"training.{key}: {training[key]!r} is not a stimulus set (stimuli.sets: {', '.join(sets)})"
    if training["train_set"] in sets and sets[training["train_set"]].get("pool", "train") == "heldout":
        yield (f"training.train_set: {training['train_set']!r} draws from the held-out identities (pool: heldout); "
               "train on a set of the training pool")
    identity_models = [m for m in training["models"] if parse_model_name(m)[0] == "identity"]
    if identity_models and training["test_set"] in sets and sets[training["test_set"]].get("pool") == "heldout":
        yield (f"training.test_set: {training['test_set']!r} draws from the held-out identities (pool: heldout), "
               f"which identity models ({', '.join(identity_models)}) have no classes for; test on a set of the "
               "training pool")
    heldout = training["heldout_set"] if len(identity_models) < len(training["models"]) else ""  # used only then
    if heldout and heldout not in sets:
        yield f"training.heldout_set: {heldout!r} is not a stimulus set (stimuli.sets: {', '.join(sets)}; '' = none)"
    elif heldout and sets[heldout].get("pool", "train") != "heldout":
        yield (f"training.heldout_set: {heldout!r} draws from the training identities; held-out evaluation needs "
               "a set with pool: heldout (or '' for none)")
    categorical = [n for n, f in FACTORS.items() if f.kind != "continuous"]
    for i, model in enumerate(training["models"]):
        task = parse_model_name(model)[0]
        if task not in categorical:
            yield (f"training.models[{i}]: task {task!r} of {model!r} is not a categorical factor "
                   f"(one of {', '.join(categorical)})")
    late = [e for e in training["snapshots"] if e > training["epochs"]]
    if late:
        yield f"training.snapshots: {late} are after the last epoch ({training['epochs']})"
    procs = (training["gpus"] or training["processes"]) * training["nodes"]
    if training["batch_size"] % procs:
        yield (f"training.batch_size: {training['batch_size']} is not divisible by the {procs} "
               f"{'GPUs' if training['gpus'] else 'processes'} of a training job")


def validate_config(config: Mapping[str, Any]) -> dict:
    """Validate a configuration and return a deep copy with defaults filled in.

    Parameters
    ----------
    config:
        The configuration as loaded from YAML (e.g. Snakemake's ``config``).
        It is not modified. Strings that spell a number are read as numbers
        (Snakemake passes nested ``--config`` values as strings).

    Returns
    -------
    dict
        A validated deep copy in which every key the schema gives a default
        for is present.

    Raises
    ------
    ConfigError
        On the first problem found; the message starts with the dotted path
        of the bad key (``stimuli.render.resolution: ...``).
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
    filled = _numbers_from_strings(copy.deepcopy(dict(config)))
    validator = _DefaultFillingValidator(load_schema())
    error = best_match(validator.iter_errors(filled))
    if error is not None:
        raise ConfigError(_format_schema_error(error))
    for message in _semantic_errors(filled):
        raise ConfigError(message)
    return filled


def load_config(path: str | Path) -> dict:
    """Read a YAML config file, validate it and return it with defaults filled in."""
    with Path(path).open() as fh:
        data = yaml.safe_load(fh)
    return validate_config({} if data is None else data)
