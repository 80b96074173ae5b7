# Helpers shared by the rule files. `config` has been validated and filled with
# defaults by the top-level Snakefile before this file is included.

import json
import math


def set_names():
    """Names of the stimulus sets in the config, in config order."""
    return list(config["stimuli"]["sets"])


def n_shards(set_name):
    """Number of render shards of a set: ceil(design size / render.shard_size)."""
    # Imported lazily so that `snakemake -n` on a bad config fails on the config,
    # and so that the rule files parse before the design module is needed.
    from infodissect.stimuli.design import design_size

    stimuli = config["stimuli"]
    size = design_size(stimuli["sets"][set_name], stimuli)
    return max(1, math.ceil(size / stimuli["render"]["shard_size"]))


def shard_paths(set_name):
    """Paths of every render shard of a set, in shard order."""
    return [
        f"results/stimuli/shards/{set_name}/{shard}.zarr"
        for shard in range(n_shards(set_name))
    ]


def stage_spec(set_name):
    """JSON (sorted keys) of everything a set's design depends on.

    Passed to the design rule as a param, so Snakemake reruns exactly the
    designs whose settings changed.
    """
    stimuli = config["stimuli"]
    spec = {
        "seed": config["seed"],
        "identities": stimuli["identities"],
        "generator": stimuli["generator"],
        "factors": stimuli["factors"],
        "set": stimuli["sets"][set_name],
        "name": set_name,
    }
    return json.dumps(spec, sort_keys=True)


def render_spec():
    """JSON (sorted keys) of everything rendering depends on besides the design."""
    stimuli = config["stimuli"]
    spec = {"generator": stimuli["generator"], "render": stimuli["render"]}
    return json.dumps(spec, sort_keys=True)


def render_mem_mb():
    """Rough memory estimate (MB) of one render job, from batch size and image size."""
    render = config["stimuli"]["render"]
    pixels = (render["resolution"] * render["antialias"]) ** 2
    return int(1024 + render["batch_size"] * pixels * 256 / 2**20)


def model_names():
    """Names of the models the config trains ('<task>_s<seed>')."""
    return list(config["training"]["models"])


def train_spec(model):
    """JSON (sorted keys) of a model's training spec: its task and seed from the name, the rest from config."""
    from infodissect.train.loop import parse_model_name

    task, seed = parse_model_name(model)
    t = config["training"]
    keys = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "width", "stem", "window", "source")
    spec = {"task": task, "seed": seed, **{k: t[k] for k in keys}}
    if t["source"] == "rendered":
        spec["render"] = {"generator": config["stimuli"]["generator"], "render": config["stimuli"]["render"]}
    return json.dumps(spec, sort_keys=True)


def train_input():
    """The training set: its rendered store, or its design table when rendering on the fly."""
    t = config["training"]
    if t["source"] == "rendered":
        return f"results/stimuli/designs/{t['train_set']}.zarr"
    return f"results/stimuli/{t['train_set']}.zarr"


def train_processes():
    """Processes per training job: one per GPU, else training.processes."""
    t = config["training"]
    return t["gpus"] if t["gpus"] > 0 else t["processes"]


def train_threads():
    """CPU threads a training job uses (all its processes together)."""
    return max(train_processes(), config["training"]["threads"])


def activations_spec():
    """JSON (sorted keys) of the activation settings."""
    a = config["activations"]
    keys = ("layers", "pooling", "dtype", "batch_size", "chunk_mb", "device")
    return json.dumps({k: a[k] for k in keys}, sort_keys=True)


def all_targets():
    """Every final output of the stages that exist so far (inputs of `rule all`)."""
    names = set_names()
    t = config["training"]
    on_the_fly = t["source"] == "rendered" and t["models"]
    # A training set rendered on the fly is never stored.
    targets = [f"results/stimuli/{name}.zarr" for name in names if not (on_the_fly and name == t["train_set"])]
    if "sweeps" in names:
        targets.append("results/figures/stimuli_factors.png")
    if "portraits" in names:
        targets.append("results/figures/stimuli_identities.png")
    for model in model_names():
        targets += [f"results/models/{model}/model.pt", f"results/figures/{model}_training.png"]
        targets += [f"results/activations/{model}/{s}.zarr" for s in config["activations"]["sets"]]
    return targets
