"""The stage table: every measuring stage of the pipeline (the MI stage and the analyses), in one place.

Each entry names the module that implements the stage and says what the rest of the
package needs to know about it:

- the command line builds ``infodissect analyses <name>`` from its ports (``--<input>``,
  ``--<output>``, ``--spec``, ``--title``, ``--threads``) and calls the module's ``run``;
- the workflow (``workflow/rules/common.smk``) takes its settings (``settings``: spec field
  -> config key), its output paths, its figures and their captions, and whether the
  config enables it;
- the report takes its figures and captions and, from the module's ``key_numbers``, the
  numbers it contributes to the table of key numbers.

A stage module defines ``Spec`` (a frozen dataclass of its settings, no defaults: they
live in the config schema), ``run(spec, inputs, outputs, title="")`` (load, compute,
write its store and figures through :mod:`infodissect.store`, return its key numbers)
and optionally ``key_numbers(path) -> dict[str, str]`` (from its finished store). See
docs/architecture.md, "How to add a stage".
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from .config import ConfigError, consistency_models, schema_default


@dataclass(frozen=True)
class Port:
    """An input or output file of a stage: ``--<name>`` on the command line, ``name`` in ``run``."""

    name: str
    help: str
    optional: bool = False  # an input that may be left out
    many: bool = False  # several paths (inputs: nargs="*"; outputs: nargs="+")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Figure:
    """A figure a stage writes: the output port that holds it, its path pattern and caption file."""

    output: str
    path: str  # pattern with the stage's wildcards ({model}, {set})
    caption: str  # workflow/report/{caption}.rst, shared by Snakemake's report() and report.html


@dataclass(frozen=True)
class Stage:
    """One row of the stage table (see the module docstring)."""

    name: str
    help: str
    module: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    figures: tuple[Figure, ...] = ()
    store: str = ""  # path pattern of the store whose key numbers the report shows ('' = none)
    settings: dict[str, str] = dataclasses.field(default_factory=dict)  # Spec field -> dotted config key
    enabled_by: str = ""  # config key whose (non-empty) value enables the stage for each analysed model
    each_set: str = ""  # config key listing the sets the {set} wildcard takes
    per_model: bool = True  # one job per analysed model ({model} wildcard), else one for the pipeline
    models: str | Callable[[dict[str, Any]], list[str]] = ""  # config key listing the models a per-model stage
    # runs for ([] = every trained model), or a function of the config giving them; '' = the analysed models
    group: str = "analyses"  # command-line group: `infodissect <group> <command>`
    command: str = ""  # subcommand name (default: the stage name)
    entry: str = "run"  # the module's run function
    numbers: str = "key_numbers"  # the module's function giving the report's key numbers of a finished store
    spec_class: str = "Spec"  # the module's spec dataclass

    @property
    def subcommand(self) -> str:
        return self.command or self.name

    def load(self) -> ModuleType:
        """The stage's module (imported on first use, so that ``--help`` stays fast)."""
        return importlib.import_module(self.module)

    def spec(self, values: dict[str, Any]) -> Any:
        """The stage's typed ``Spec`` from ``values``, missing settings taken from the config schema's defaults."""
        cls = getattr(self.load(), self.spec_class)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        where = f"{self.group} {self.subcommand} --spec"
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown} (known: {sorted(fields)})")
        out = {}
        for name, field in fields.items():
            value = values[name] if name in values else schema_default(self.settings[name])
            kind = {"int": int, "float": (int, float), "str": str, "bool": bool, "list[str]": list, "list[int]": list,
                    "dict": dict}.get(str(field.type))
            if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise ConfigError(f"{where}: {name} = {value!r} is not of type {field.type}")
            out[name] = value
        return cls(**out)

    def settings_json(self, config: dict[str, Any]) -> str:
        """JSON (sorted keys) of the stage's settings in a validated config (the workflow's ``--spec``)."""
        return json.dumps({k: config_value(config, key) for k, key in self.settings.items()}, sort_keys=True)

    def enabled(self, config: dict[str, Any]) -> bool:
        """Whether the config runs the stage (for every analysed model)."""
        return not self.enabled_by or bool(config_value(config, self.enabled_by))

    def sets(self, config: dict[str, Any]) -> list[str]:
        """The values of the {set} wildcard (one ``None`` when the stage has none)."""
        return list(config_value(config, self.each_set)) if self.each_set else [None]

    def figure_paths(self, config: dict[str, Any], model: str | None = None) -> list[tuple[str, str, dict[str, str]]]:
        """(path, caption stem, wildcards) of every figure the stage writes under ``config`` for ``model``."""
        if not self.enabled(config):
            return []
        out = []
        for s in self.sets(config):
            wildcards = _wildcards(model, s)
            out += [(f.path.format(**wildcards), f.caption, wildcards) for f in self.figures]
        return out

    def store_path(self, config: dict[str, Any], model: str | None = None) -> str | None:
        """The store the report reads key numbers from (for the first set), if the stage runs and has one."""
        sets = self.sets(config)
        if not self.store or not self.enabled(config) or not sets:
            return None
        return self.store.format(**_wildcards(model, sets[0]))


def _wildcards(model: str | None, set_name: str | None) -> dict[str, str]:
    """The {model} and {set} wildcards a stage's paths take (those that are given)."""
    return {k: v for k, v in (("model", model), ("set", set_name)) if v is not None}


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a (validated) config, e.g. ``analyses.pose_bins``."""
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


GROUPS = {
    "activations": "read-out layer activations into chunked Zarr",
    "mi": "MI between layers (or pixels) and every generative factor",
    "analyses": "the paper's analyses and their figures",
}

_MI_SETTINGS = {"factors": "mi.factors", "given": "mi.given", "n_perm": "mi.n_perm", "alpha": "mi.alpha", "seed": "seed",
                "chunk_mb": "mi.chunk_mb", "scheduler": "mi.scheduler"}

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage(
        name="activations", group="activations", command="extract", module="infodissect.activations.extract",
        help="extract every read-out layer of a model on a stimulus set",
        inputs=(Port("model", "model.pt of the training stage"), Port("stimuli", "rendered stimulus store")),
        outputs=(Port("out", "output activation store"),),
        settings={k: f"activations.{k}" for k in ("layers", "pooling", "dtype", "batch_size", "chunk_mb", "device",
                                                  "processes")}),
    Stage(
        name="mi_layers", group="mi", command="layers", module="infodissect.analyses.information",
        entry="run_layers", spec_class="LayersSpec",
        help="every layer of an activation store against every factor",
        inputs=(Port("activations", "activation store (results/activations/{model}/{set}.zarr)"),),
        outputs=(Port("out", "output MI store"),),
        settings={**_MI_SETTINGS, "layers": "mi.layers", "given": "mi.given_layers"}),
    Stage(
        name="mi_pixels", group="mi", command="pixels", module="infodissect.analyses.information",
        entry="run_pixels", spec_class="PixelsSpec",
        help="every pixel of a stimulus set against every factor",
        inputs=(Port("stimuli", "rendered stimulus store"),),
        outputs=(Port("out", "output MI store"),),
        settings=_MI_SETTINGS, per_model=False),
    Stage(
        name="generalisation", module="infodissect.analyses.generalisation",
        help="the network's response along shape, texture and joint morphs",
        inputs=(Port("activations", "activation store of the morph set (needs logits)"),),
        outputs=(Port("out", "output store (summary at the root, /responses per morph)"),
                 Port("figure", "output figure")),
        figures=(Figure("figure", "results/figures/{model}_generalisation.png", "generalisation"),),
        store="results/analyses/{model}/generalisation.zarr", enabled_by="analyses.morph_set"),
    Stage(
        name="revcorr", module="infodissect.analyses.revcorr",
        help="reverse-correlation shape and texture feature maps on the face mesh",
        inputs=(Port("activations", "activation store of the revcorr set (needs logits)"),
                Port("stimuli", "the revcorr stimulus store (for its face model)")),
        outputs=(Port("out", "output store (identity, vertex) with the template mesh"),
                 Port("figure", "output figure of the maps"),
                 Port("features", "output store: every layer's information about the features"),
                 Port("features_figure", "output figure of the features")),
        figures=(Figure("figure", "results/figures/{model}_revcorr.png", "revcorr"),
                 Figure("features_figure", "results/figures/{model}_features.png", "features")),
        settings={"n_perm": "mi.n_perm", "alpha": "mi.alpha", "seed": "seed", "scheduler": "mi.scheduler"},
        enabled_by="analyses.revcorr_set"),
    Stage(
        name="pose", module="infodissect.analyses.pose",
        help="identity information within, across and given pose; cross-pose read-outs",
        inputs=(Port("activations", "activation store of a set where identity and pose vary"),),
        outputs=(Port("out", "output store (layer, pose bins)"), Port("figure", "output figure")),
        figures=(Figure("figure", "results/figures/{model}_pose.png", "pose"),),
        store="results/analyses/{model}/pose.zarr",
        settings={"pose_factor": "analyses.pose_factor", "pose_bins": "analyses.pose_bins",
                  "readout_grid": "analyses.readout_grid"},
        enabled_by="analyses.pose_set"),
    Stage(
        name="profile", module="infodissect.analyses.profile",
        help="layer profile, unit x factor matrices and spatial MI maps",
        inputs=(Port("mi", "MI store of a model's layers"),
                Port("pixels", "MI store of the set's pixels (the input baseline)", optional=True)),
        outputs=(Port("out", "output profile store (layer, factor)"),
                 Port("profile_figure", "output figure: the layer profile"),
                 Port("units_figure", "output figure: unit x factor matrices"),
                 Port("maps_figure", "output figure: spatial MI maps")),
        figures=(Figure("profile_figure", "results/figures/{model}_{set}_layer_profile.png", "layer_profile"),
                 Figure("units_figure", "results/figures/{model}_{set}_units.png", "units"),
                 Figure("maps_figure", "results/figures/{model}_{set}_spatial_maps.png", "spatial_maps")),
        store="results/analyses/{model}/{set}_profile.zarr", each_set="mi.sets"),
    Stage(
        name="dissection", module="infodissect.analyses.dissection",
        help="network dissection: each unit's best-overlapping face part (IoU of its top-quantile mask with the "
             "rendered part maps), with the pixels, an untrained network, rotations and location-only units "
             "as baselines",
        inputs=(Port("activations", "activation store of the set (layers as full maps)"),
                Port("stimuli", "the set's stimulus store (its part maps)"),
                Port("model", "model.pt of the training stage (architecture, receptive fields)"),
                Port("mi", "the model's MI store of the set: each unit's most informative factor", optional=True),
                Port("snapshots", "weights kept during training (results/models/{model}/snapshots/epoch{E}.pt): "
                                  "dissected across training", many=True)),
        outputs=(Port("out", "output store: a node per layer (iou (quantile, unit, concept), labels, thresholds)"),
                 Port("tally", "output CSV with NetDissect-Lite's tally columns"),
                 Port("figure", "output figure: detectors per concept and layer, baselines"),
                 Port("units_figure", "output figure: each layer's best unit on its top images")),
        figures=(Figure("figure", "results/figures/{model}_{set}_dissection.png", "dissection"),
                 Figure("units_figure", "results/figures/{model}_{set}_dissection_units.png", "dissection_units")),
        store="results/dissection/{model}/{set}.zarr", each_set="dissection.sets", enabled_by="dissection.sets",
        settings={**{k: f"dissection.{k}" for k in ("quantiles", "iou_threshold", "concepts", "image_factors",
                                                    "layers", "batch_size", "top_images", "workers", "untrained",
                                                    "rotation_layer", "rotation_alphas")}, "seed": "seed"}),
    Stage(
        name="visibility", module="infodissect.analyses.visibility",
        help="factor visibility: pixel MI per factor and every trained classifier's accuracy (held-out "
             "identities) against chance",
        inputs=(Port("pixels", "pixel MI store (results/mi/pixels/{set}.zarr); omit if not measured", optional=True),
                Port("models", "trained models' directories (results/models/{model})", many=True),
                Port("heldout", "held-out evaluations (results/models/{model}/heldout.json) to score instead of "
                                "the test set", many=True)),
        outputs=(Port("out", "output store (factor, model)"), Port("figure", "output figure")),
        figures=(Figure("figure", "results/figures/factor_visibility.png", "factor_visibility"),),
        store="results/analyses/visibility.zarr", per_model=False),
    Stage(
        name="relevance", module="infodissect.analyses.relevance",
        help="relevance propagation (LRP) of the true-class logit, validated by removing patches in order of "
             "relevance (MoRF, random, LeRF), and its share per rendered face part",
        inputs=(Port("model", "model.pt of the training stage"),
                Port("stimuli", "the set's stimulus store (images, part maps, factors)"),
                Port("revcorr", "the model's reverse-correlation store (results/analyses/{model}/revcorr.zarr): its "
                                "shape and texture features per face part, beside the relevance", optional=True)),
        outputs=(Port("out", "output store (relevance (attribution, sample, y, x), masking curves, AOPC, part "
                             "shares)"),
                 Port("figure", "output figure: mean and example maps per method"),
                 Port("masking_figure", "output figure: masking curves and AOPC"),
                 Port("parts_figure", "output figure: relevance per face part")),
        figures=(Figure("figure", "results/figures/{model}_{set}_relevance.png", "relevance"),
                 Figure("masking_figure", "results/figures/{model}_{set}_relevance_masking.png", "relevance_masking"),
                 Figure("parts_figure", "results/figures/{model}_{set}_relevance_parts.png", "relevance_parts")),
        store="results/relevance/{model}/{set}.zarr", each_set="relevance.sets", enabled_by="relevance.sets",
        models="relevance.models",
        settings={**{k: f"relevance.{k}" for k in ("methods", "samples", "batch_size", "patch", "steps", "fill",
                                                   "masking_methods")}, "seed": "seed"}),
    Stage(
        name="relevance_compare", module="infodissect.analyses.relevance", entry="run_compare",
        spec_class="CompareSpec",
        help="relevance across models (seeds and tasks): correlation of their maps and the cross-model masking "
             "matrix",
        inputs=(Port("relevance", "relevance stores of the same set (results/relevance/{model}/{set}.zarr)",
                     many=True),
                Port("models", "the models' model.pt, in the same order", many=True),
                Port("stimuli", "the set's stimulus store")),
        outputs=(Port("out", "output store (model, other)"), Port("figure", "output figure")),
        figures=(Figure("figure", "results/figures/relevance_{set}_across_models.png", "relevance_models"),),
        store="results/relevance/{set}_across_models.zarr", each_set="relevance.sets", enabled_by="relevance.sets",
        per_model=False, numbers="compare_key_numbers",
        settings={k: f"relevance.{k}" for k in ("batch_size", "patch", "steps", "fill")}),
    Stage(
        name="adversarial", module="infodissect.analyses.adversarial",
        help="adversarial stimulus sets: an iterative L-inf attack (MI-FGSM or PGD, torchattacks) on an ensemble of "
             "trained classifiers, rounded to uint8 and re-checked; each budget's set is a stimulus store every "
             "stage reads",
        inputs=(Port("stimuli", "the source set's stimulus store"),
                Port("models", "model.pt of the ensemble's models (one task)", many=True),
                Port("transfer", "model.pt of models left out of the ensemble: the attack's transfer", many=True)),
        outputs=(Port("out", "output stimulus stores, one per budget in order "
                             "(results/stimuli/{set}_adv_{budget}.zarr)", many=True),
                 Port("summary", "output store: success per budget and model, perturbation norms"),
                 Port("figure", "output figure: success against budget, example perturbations")),
        figures=(Figure("figure", "results/figures/{set}_adversarial.png", "adversarial"),),
        store="results/adversarial/{set}.zarr", each_set="adversarial.sets", enabled_by="adversarial.sets",
        per_model=False,
        settings={**{k: f"adversarial.{k}" for k in ("budgets", "attack", "steps", "targeted", "samples",
                                                     "batch_size")}, "seed": "seed"}),
    Stage(
        name="adversarial_consistency", module="infodissect.analyses.adversarial", entry="run_consistency",
        spec_class="ConsistencySpec",
        help="consistency of unit semantics on adversarial images (Dong et al.): per layer and unit, response "
             "correlation and top-image overlap real vs adversarial, information about the true class and the "
             "attack's target, and the representation's distance ratio",
        inputs=(Port("activations", "the model's activations on the source set"),
                Port("adversarial", "the model's activations on the set's adversarial sets "
                                    "(results/activations/{model}/{set}_adv_{budget}.zarr)", many=True),
                Port("stimuli", "the source set's stimulus store (example images)"),
                Port("adversarial_stimuli", "the adversarial sets' stimulus stores "
                                            "(results/stimuli/{set}_adv_{budget}.zarr)", many=True),
                Port("dissection", "the model's dissection stores of adversarial sets, budget 0 among them "
                                   "(results/dissection/{model}/{set}_adv_{budget}.zarr): labels real vs adversarial",
                     many=True)),
        outputs=(Port("out", "output store (budget, layer, unit)"), Port("figure", "output figure"),
                 Port("maps_figure", "output figure: example images and the unit maps that changed most")),
        figures=(Figure("figure", "results/figures/{model}_{set}_adversarial_consistency.png",
                        "adversarial_consistency"),
                 Figure("maps_figure", "results/figures/{model}_{set}_adversarial_units.png", "adversarial_units")),
        store="results/adversarial/{model}/{set}_consistency.zarr", each_set="adversarial.sets",
        enabled_by="adversarial.sets", numbers="consistency_key_numbers", models=consistency_models,
        settings={"topk": "adversarial.topk", "layers": "adversarial.layers"}),
    Stage(
        name="adversarial_compare", module="infodissect.analyses.adversarial", entry="run_compare",
        spec_class="CompareSpec",
        help="consistency of unit semantics across models on the same adversarial images (e.g. a baseline and a "
             "model trained with the consistency loss), beside their clean test accuracy and the attack's success "
             "on each",
        inputs=(Port("consistency", "the models' consistency stores of one set "
                                    "(results/adversarial/{model}/{set}_consistency.zarr)", many=True),
                Port("metrics", "the models' metrics.csv, in the same order", many=True),
                Port("summary", "the attack's summary store (results/adversarial/{set}.zarr)")),
        outputs=(Port("out", "output store (model, budget, layer)"), Port("figure", "output figure")),
        figures=(Figure("figure", "results/figures/{set}_adversarial_across_models.png", "adversarial_models"),),
        store="results/adversarial/{set}_across_models.zarr", each_set="adversarial.sets",
        enabled_by="adversarial.sets", per_model=False, numbers="compare_key_numbers",
        settings={"accuracy_margin": "adversarial.accuracy_margin"}),
)}


def run_stage(name: str, spec: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, str | Path],
              title: str = "") -> dict[str, Any]:
    """Run stage ``name`` (the command line's dispatch): typed spec, then the module's run function."""
    stage = STAGES[name]
    run = getattr(stage.load(), stage.entry)
    paths = {k: [Path(p) for p in v] if isinstance(v, (list, tuple)) else Path(v) for k, v in outputs.items()}
    return run(stage.spec(spec), inputs, paths, title=title)


def stage_of(group: str, command: str) -> Stage:
    """The stage behind ``infodissect <group> <command>``."""
    return next(s for s in STAGES.values() if s.group == group and s.subcommand == command)
