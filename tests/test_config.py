"""Tests of infodissect.config: schema validation, defaults, semantic checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from infodissect.config import ConfigError, adversarial_set_names, load_config, load_schema, validate_config
from infodissect.faces.factors import FACTORS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def demo() -> dict:
    with (ROOT / "config" / "config.yaml").open() as fh:
        return yaml.safe_load(fh)


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(ROOT / "config" / name)
    assert set(config) == {"seed", "stimuli", "training", "activations", "mi", "analyses", "dissection", "relevance",
                           "adversarial"}
    assert config["stimuli"]["render"]["shard_size"] % config["stimuli"]["render"]["batch_size"] == 0


def test_the_classifiers_config_merges_over_the_demo(demo):
    """config/classifiers.yaml is an overlay (`--configfile config/classifiers.yaml`), merged as Snakemake merges."""
    from snakemake.utils import update_config

    overlay = yaml.safe_load((ROOT / "config" / "classifiers.yaml").read_text())
    update_config(demo, overlay)
    config = validate_config(demo)
    assert config["training"]["models"] == ["gender_s1", "expression_s1"]
    assert config["stimuli"]["identities"] == 384 and config["stimuli"]["heldout_identities"] == 32
    assert config["stimuli"]["sets"]["train"]["samples_per_identity"] == 48
    assert "expression" in config["stimuli"]["sets"]["train"]["vary"]  # the demo's train set, merged


def test_validate_does_not_modify_input(demo):
    before = copy.deepcopy(demo)
    validate_config(demo)
    assert demo == before


def test_defaults_are_filled():
    config = validate_config(
        {
            "seed": 1,
            "stimuli": {
                "identities": 4,
                "sets": {
                    "sweeps": {"design": "sweep"},
                    "portraits": {"design": "portraits"},
                    "train": {"design": "crossed", "samples_per_identity": 2},
                    "morphs": {"design": "morph", "pairs": 1, "levels": [0, 1]},
                    "revcorr": {"design": "revcorr", "identities": 2, "samples_per_identity": 3},
                },
            },
            "training": {"models": []},
        }
    )
    stimuli = config["stimuli"]
    assert stimuli["render"]["resolution"] == 64
    assert stimuli["render"]["device"] == "cpu"
    assert stimuli["generator"]["mesh"] == {"rings": 100, "segments": 128}
    # every factor but identity gets its default entry
    assert set(stimuli["factors"]) == set(FACTORS) - {"identity"}
    assert stimuli["factors"]["yaw"] == {
        "min": -12.0, "max": 12.0, "neutral": 0.0, "distribution": "uniform",
    }
    sets = stimuli["sets"]
    assert sets["sweeps"]["identities"] == 1
    assert sets["sweeps"]["steps"] == 9
    assert sets["sweeps"]["factors"] == [n for n in FACTORS if n != "identity"]
    assert sets["portraits"]["count"] == 16
    assert sets["train"]["vary"] == []
    assert sets["morphs"]["types"] == ["shape", "texture", "both"]
    assert sets["revcorr"]["sigma"] == 0.5


def test_empty_config_is_the_demo(demo):
    assert validate_config({}) == validate_config(demo)


def test_partial_factor_entry_keeps_other_defaults():
    config = validate_config({"stimuli": {"factors": {"yaw": {"min": -10, "max": 10, "neutral": 0}}}})
    assert config["stimuli"]["factors"]["yaw"]["max"] == 10
    assert config["stimuli"]["factors"]["pitch"]["max"] == 5.0


def test_numeric_strings_from_snakemake_config_are_numbers():
    config = validate_config({"stimuli": {"render": {"resolution": "32", "fov_deg": "12.5"}}})
    assert config["stimuli"]["render"]["resolution"] == 32
    assert config["stimuli"]["render"]["fov_deg"] == 12.5


def test_schema_factors_match_catalogue():
    factors = load_schema()["properties"]["stimuli"]["properties"]["factors"]["properties"]
    assert set(factors) == set(FACTORS) - {"identity"}
    for name, entry in factors.items():
        assert entry["$ref"].endswith(f"/{FACTORS[name].kind}_factor")


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: c["stimuli"]["factors"].update(nose_size={"min": 0, "max": 1, "neutral": 0}),
            "stimuli.factors.nose_size: unknown factor",
        ),
        (
            lambda c: c["stimuli"]["factors"]["yaw"].update(min=50.0, max=10.0),
            "stimuli.factors.yaw: min (50.0) is greater than max (10.0)",
        ),
        (
            lambda c: c["stimuli"]["render"].update(resolution=0),
            "stimuli.render.resolution: 0 is less than the minimum of 8",
        ),
        (lambda c: c.update(colour="red"), "colour: unknown key"),
        (lambda c: c["stimuli"]["render"].update(gamma=2.2), "stimuli.render.gamma: unknown key"),
        (lambda c: c["stimuli"]["sets"]["train"].update(extra=1), "stimuli.sets.train.extra: unknown key"),
        (
            lambda c: c["stimuli"]["sets"]["train"]["vary"].__setitem__(3, "nose"),
            "stimuli.sets.train.vary[3]: unknown factor 'nose'",
        ),
        (
            lambda c: c["stimuli"]["render"].update(shard_size=1000),
            "stimuli.render.shard_size: 1000 is not a multiple",
        ),
        (
            lambda c: c["stimuli"]["factors"]["yaw"].update(neutral=60.0),
            "stimuli.factors.yaw: neutral (60.0) is outside",
        ),
        (
            lambda c: c["stimuli"]["factors"]["pitch"].update(min=-80.0),
            "stimuli.factors.pitch.min: -80.0 is below the model's bound",
        ),
        (
            lambda c: c["stimuli"]["factors"]["yaw"].update(distribution="normal"),
            "stimuli.factors.yaw: 'sd' is a required property",
        ),
        (
            lambda c: c["stimuli"]["factors"]["gender"].update(levels=["female", "other"]),
            "stimuli.factors.gender.levels[1]: unknown level 'other'",
        ),
        (
            lambda c: c["stimuli"]["factors"]["gender"].update(neutral="male", levels=["female"]),
            "stimuli.factors.gender.neutral:",
        ),
        (
            lambda c: c["stimuli"]["factors"]["ethnicity"].update(weights=[1, 2]),
            "stimuli.factors.ethnicity.weights:",
        ),
        (
            lambda c: c["stimuli"]["factors"]["ethnicity"].update(weights=[1, 0, 2]),
            "stimuli.factors.ethnicity.weights[1]:",
        ),
        (lambda c: c["stimuli"]["sets"]["morphs"].update(levels=[]), "stimuli.sets.morphs.levels:"),
        (lambda c: c["stimuli"].update(heldout_identities=0),
         "stimuli.sets.heldout.pool: heldout needs held-out identities, but stimuli.heldout_identities is 0"),
        (lambda c: c["stimuli"].update(heldout_identities=-1),
         "stimuli.heldout_identities: -1 is less than the minimum of 0"),
        (lambda c: c["stimuli"]["sets"]["heldout"].update(pool="people"),
         "stimuli.sets.heldout.pool: 'people' is not one of ['train', 'heldout']"),
        (lambda c: c["stimuli"]["sets"]["morphs"].update(pool="heldout"),
         "stimuli.sets.morphs.pool: a morph set cannot draw from the held-out pool"),
        (lambda c: c["stimuli"]["sets"]["revcorr"].update(pool="heldout"),
         "stimuli.sets.revcorr.pool: a revcorr set cannot draw from the held-out pool"),
        (lambda c: c["stimuli"].update(heldout_identities=1, sets={
            **c["stimuli"]["sets"], "sweeps": {"design": "sweep", "identities": 2, "pool": "heldout"}}),
         "stimuli.sets.sweeps.identities: 2 is more than the identity pool (stimuli.heldout_identities = 1)"),
        (lambda c: c["training"].update(heldout_set="nope"), "training.heldout_set: 'nope' is not a stimulus set"),
        (lambda c: c["training"].update(heldout_set="test"),
         "training.heldout_set: 'test' draws from the training identities"),
        (lambda c: c["training"].update(train_set="heldout"),
         "training.train_set: 'heldout' draws from the held-out identities"),
        (lambda c: c["training"].update(test_set="heldout"),
         "training.test_set: 'heldout' draws from the held-out identities (pool: heldout), which identity models"),
        (lambda c: c["activations"].update(models=["gender_s3"]),
         "activations.models[0]: 'gender_s3' is not among training.models (identity_s0, identity_s1, gender_s1)"),
        (lambda c: c["activations"].update(models=["Gender"]), "activations.models[0]: 'Gender' does not match"),
        (
            lambda c: c["stimuli"]["sets"].update(Bad={"design": "portraits"}),
            "stimuli.sets.Bad: set name must match",
        ),
        (
            lambda c: c["stimuli"]["sets"]["train"].update(design="grid"),
            "stimuli.sets.train.design: 'grid' is not one of",
        ),
        (
            lambda c: c["stimuli"]["sets"]["revcorr"].update(identities=99),
            "stimuli.sets.revcorr.identities: 99 is more than the identity pool",
        ),
        (
            lambda c: c["stimuli"]["factors"].update(identity={"levels": ["a"], "neutral": "a"}),
            "stimuli.factors.identity:",
        ),
        (lambda c: c.update(seed=-1), "seed: -1 is less than the minimum of 0"),
        (lambda c: c["training"].update(models=["yaw_s0"]), "training.models[0]: task 'yaw'"),
        (lambda c: c["training"].update(models=["identity"]), "training.models[0]: 'identity' does not match"),
        (lambda c: c["training"].update(test_set="nope"), "training.test_set: 'nope' is not a stimulus set"),
        (lambda c: c["training"].update(processes=3), "training.batch_size: 64 is not divisible by the 3"),
        (lambda c: c["training"].update(stem="tiny"), "training.stem: 'tiny' is not one of"),
        (lambda c: c.update(mi={"sets": ["train"]}), "mi.sets[0]: 'train' is not among activations.sets"),
        (lambda c: c.update(mi={"factors": ["nose"]}), "mi.factors[0]: 'nose' is not one of"),
        (lambda c: c.update(mi={"n_perm": -1}), "mi.n_perm: -1 is less than the minimum of 0"),
        (lambda c: c.update(mi={"scheduler": "cluster"}), "mi.scheduler: 'cluster' is not local"),
        (lambda c: c.update(mi={"layers": ["pool"]}, activations={"layers": ["logits"]}),
         "mi.layers[0]: 'pool' is not among activations.layers"),
        (lambda c: c.update(analyses={"morph_set": "analysis"}), "analyses.morph_set: 'analysis' is a 'independent'"),
        (lambda c: c.update(analyses={"morph_set": "sweeps"}), "analyses.morph_set: 'sweeps' is not among"),
        (lambda c: c.update(analyses={"pose_set": "sweeps"}), "analyses.pose_set: 'sweeps' is not among"),
        (lambda c: c.update(analyses={"pose_factor": "pitch"}, stimuli={"sets": {
            **c["stimuli"]["sets"], "analysis": {"design": "independent", "samples": 64, "vary": ["identity", "yaw"]}}}),
         "analyses.pose_set: 'analysis' does not vary ['pitch']"),
        (lambda c: c.update(analyses={"revcorr_set": "morphs"}), "analyses.revcorr_set: 'morphs' is a 'morph' set"),
        (lambda c: c.update(relevance={"sets": ["nope"]}), "relevance.sets[0]: 'nope' is not a stimulus set"),
        (lambda c: c.update(relevance={"models": ["identity_s7"]}),
         "relevance.models[0]: 'identity_s7' is not among training.models"),
        (lambda c: c.update(relevance={"methods": ["lrp0"], "masking_methods": ["gradient_x_input"]}),
         "relevance.masking_methods[0]: 'gradient_x_input' is not among relevance.methods"),
        (lambda c: c.update(relevance={"patch": 5}), "relevance.patch: 5 does not divide the image size 64"),
        (lambda c: c.update(relevance={"methods": ["lrp_alpha"]}), "relevance.methods[0]: 'lrp_alpha' is not one of"),
        (lambda c: c.update(mi={"given": {"gender_strength": "age"}}), "mi.given.gender_strength: 'age' is not one of"),
        (lambda c: c.update(adversarial={"sets": ["nope"]}), "adversarial.sets[0]: 'nope' is not a stimulus set"),
        (lambda c: c.update(adversarial={"sets": ["test"], "transfer": ["identity_s7"]}),
         "adversarial.transfer[0]: 'identity_s7' is not among training.models"),
        (lambda c: c.update(adversarial={"sets": ["test"], "models": ["identity_s0"], "transfer": ["gender_s1"]}),
         "adversarial.models / transfer: ['gender', 'identity'] are different tasks"),
        (lambda c: c.update(adversarial={"sets": ["test"], "models": ["identity_s0"], "transfer": ["identity_s0"]}),
         "adversarial.transfer[0]: 'identity_s0' is in the ensemble"),
        (lambda c: c.update(adversarial={"sets": ["test"], "budgets": [4, 4]}), "adversarial.budgets: [4, 4] has non-unique"),
        (lambda c: c.update(adversarial={"sets": ["test"], "attack": "cw"}), "adversarial.attack: 'cw' is not one of"),
        (lambda c: c["training"].update(adversarial={"models": ["identity_s9"]}),
         "training.adversarial.models[0]: 'identity_s9' is not among training.models"),
        (lambda c: c["training"].update(adversarial={"layer": "conv1"}), "training.adversarial.layer: 'conv1' is not one of"),
        (lambda c: c["activations"].update(sets=["analysis", "test_adv_3"]),
         "activations.sets[1]: 'test_adv_3' is not a stimulus set (nor an adversarial set"),
    ],
)
def test_errors_name_the_key(demo, mutate, expected):
    mutate(demo)
    assert _error(demo).startswith(expected)


def test_adversarial_sets_are_sets_the_stages_read(demo):
    """An adversarial set {set}_adv_{budget} of the config may be extracted (and measured) like any stimulus set."""
    demo["activations"]["sets"] += ["test_adv_8"]
    demo["adversarial"].update(sets=["test"], budgets=[2, 8])
    config = validate_config(demo)
    assert adversarial_set_names(config) == ["test_adv_2", "test_adv_8"]


def test_heldout_keys_default_and_what_they_need(demo):
    config = validate_config({"stimuli": {"sets": {"p": {"design": "portraits"}, "m": {
        "design": "morph", "pairs": 1, "levels": [0]}}},
        "training": {"models": ["identity_s0"], "train_set": "p", "test_set": "p"},
        "activations": {"sets": ["m"]}, "mi": {"sets": ["m"]}, "analyses": {"pose_set": "", "revcorr_set": "",
                                                                           "morph_set": "m"},
        "dissection": {"sets": []}, "relevance": {"sets": []}, "adversarial": {"sets": []}})
    assert config["stimuli"]["heldout_identities"] == 16
    assert config["stimuli"]["sets"]["p"]["pool"] == config["stimuli"]["sets"]["m"]["pool"] == "train"
    assert config["training"]["heldout_set"] == "heldout" and config["activations"]["models"] == ["identity_s0"]
    # training.heldout_set is needed (and checked) only when a model other than identity is trained.
    assert "heldout" not in config["stimuli"]["sets"]
    demo["training"].update(models=["identity_s0", "gender_s0"], heldout_set="")
    demo["activations"]["models"] = []  # [] = every trained model
    assert validate_config(demo)["training"]["heldout_set"] == ""
    demo["training"]["heldout_set"] = "heldout"
    del demo["stimuli"]["sets"]["heldout"]
    assert _error(demo).startswith("training.heldout_set: 'heldout' is not a stimulus set")


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
