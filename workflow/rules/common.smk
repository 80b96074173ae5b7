# Helpers shared by the rule files. `config` has been validated and filled with
# defaults by the top-level Snakefile before this file is included.

import json
import math
import os


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
    from infodissect.faces.model import GENERATOR_VERSION

    stimuli = config["stimuli"]
    spec = {
        "version": GENERATOR_VERSION,
        "seed": config["seed"],
        "identities": stimuli["identities"],
        "generator": stimuli["generator"],
        "factors": stimuli["factors"],
        "set": stimuli["sets"][set_name],
        "name": set_name,
    }
    if spec["set"].get("pool") == "heldout":  # only held-out sets depend on the held-out pool's size
        spec["heldout_identities"] = stimuli["heldout_identities"]
    return json.dumps(spec, sort_keys=True)


def render_spec():
    """JSON (sorted keys) of everything rendering depends on besides the design."""
    from infodissect.faces.model import GENERATOR_VERSION

    stimuli = config["stimuli"]
    # The version makes Snakemake re-render when the generator or the store format changes.
    spec = {"generator": stimuli["generator"], "render": stimuli["render"], "version": GENERATOR_VERSION}
    return json.dumps(spec, sort_keys=True)


def stimulus_figures():
    """The stimulus figures: (path, caption file, wildcards), at the render resolution from the
    `sweeps` and `portraits` stores and at each of stimuli.figures.resolutions rendered from their
    designs (factors, identities and large portraits)."""
    names = set_names()
    out = []
    if "sweeps" in names:
        out.append(("results/figures/stimuli_factors.png", caption("stimuli_factors"), {}))
    if "portraits" in names:
        out.append(("results/figures/stimuli_identities.png", caption("stimuli_identities"), {}))
    for res in config["stimuli"]["figures"]["resolutions"]:
        if "sweeps" in names:
            out.append((f"results/figures/stimuli_factors_{res}.png", caption("stimuli_factors"), {"res": str(res)}))
        if "portraits" in names:
            out.append((f"results/figures/stimuli_identities_{res}.png", caption("stimuli_identities"),
                        {"res": str(res)}))
            out.append((f"results/figures/stimuli_portraits_{res}.png", caption("stimuli_portraits"),
                        {"res": str(res)}))
    return out


def render_mem_mb():
    """Rough memory estimate (MB) of one render job, from batch size and image size."""
    render = config["stimuli"]["render"]
    pixels = (render["resolution"] * render["antialias"]) ** 2
    return int(1024 + render["batch_size"] * pixels * 256 / 2**20)


def model_names():
    """Names of the models the config trains ('<task>_s<seed>')."""
    return list(config["training"]["models"])


def task_of(model):
    """The task of a model name ('gender_s1' -> 'gender')."""
    from infodissect.config import parse_model_name

    return parse_model_name(model)[0]


def analysed_models():
    """The models whose activations, MI and analyses are run: activations.models, or every trained model;
    none when the config trains none (activations.models is checked against training.models otherwise)."""
    from infodissect.config import analysed_models as analysed

    return analysed(config)


def critical_path(wildcards):
    """A job's scheduling priority: 1 on the chain that ends in the workflow's longest job, the layers' MI
    of the analysed models (the designs, renders and stores of the MI sets and of the sets training reads,
    the analysed models' training, their activations on the MI sets, the MI itself), 0 elsewhere and
    everywhere when no layer is measured. Snakemake then starts that chain first and fills the other cores
    around it, instead of leaving one idle at the end while the MI runs alone."""
    models, mi_sets = analysed_models(), set(config["mi"]["sets"])
    if not models or not mi_sets:
        return 0
    model, set_name = getattr(wildcards, "model", None), getattr(wildcards, "set", None)
    if model is not None:  # training (no set), activations and MI
        return int(model in models and (set_name is None or set_name in mi_sets))
    t = config["training"]
    read = {t["test_set"]} | ({t["train_set"]} if t["source"] == "stored" else set())
    return int(set_name in mi_sets | read)


def heldout_models():
    """The trained models evaluated on training.heldout_set: every one whose task is not identity
    (an identity network has no class for a person it never saw)."""
    if not config["training"]["heldout_set"]:
        return []
    return [m for m in model_names() if task_of(m) != "identity"]


def heldout_input(wildcards):
    """Inputs of a model's held-out evaluation; a clear error, before any job runs, for one not scheduled."""
    t = config["training"]
    if wildcards.model not in heldout_models():
        why = ("training.heldout_set is ''" if not t["heldout_set"] else
               "an identity model has no class for the held-out identities" if task_of(wildcards.model) == "identity"
               else f"it is not in training.models ({', '.join(t['models']) or 'empty'})")
        raise ValueError(f"model {wildcards.model!r} is not evaluated on held-out identities: {why}")
    return {"model": f"results/models/{wildcards.model}/model.pt",
            "stimuli": f"results/stimuli/{t['heldout_set']}.zarr",
            "train": f"results/stimuli/designs/{t['train_set']}.zarr"}


def train_spec(model):
    """JSON (sorted keys) of a model's training spec: its task and seed from the name, the rest from config."""
    from infodissect.config import parse_model_name

    task, seed = parse_model_name(model)
    t = config["training"]
    keys = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "width", "stem", "window", "source",
            "snapshots")
    spec = {"task": task, "seed": seed, **{k: t[k] for k in keys}}
    adv = t["adversarial"]
    if model in adv["models"]:  # adversarial training with a consistency loss
        spec["adversarial"] = {k: adv[k] for k in ("budget", "steps", "layer", "weight")}
    if t["source"] == "rendered":
        spec["render"] = {"generator": config["stimuli"]["generator"], "render": config["stimuli"]["render"]}
    return json.dumps(spec, sort_keys=True)


def train_input(wildcards):
    """The training set of a configured model: its rendered store, or its design table when
    rendering on the fly. A model the config does not name is an error, before any job runs."""
    t = config["training"]
    if wildcards.model not in t["models"]:
        raise ValueError(f"model {wildcards.model!r} is not in training.models ({', '.join(t['models']) or 'empty'}); "
                         "add it to the config to train it")
    if t["source"] == "rendered":
        return f"results/stimuli/designs/{t['train_set']}.zarr"
    return f"results/stimuli/{t['train_set']}.zarr"


def snapshot_paths(model="{model}"):
    """The weights each training job keeps (training.snapshots), for ``model`` (a wildcard pattern by default)."""
    return [f"results/models/{model}/snapshots/epoch{e}.pt" for e in sorted(config["training"]["snapshots"])]


def train_processes():
    """Processes per training job: one per GPU, else training.processes."""
    t = config["training"]
    return t["gpus"] if t["gpus"] > 0 else t["processes"]


def train_resources():
    """Resources of a training job: GPUs per node, memory, nodes (and, across nodes, one task per node,
    with `mpi` telling the SLURM executor that the command starts its own srun)."""
    t = config["training"]
    res = {"gpu": t["gpus"], "mem_mb": 4096, "nodes": t["nodes"]}
    if t["nodes"] > 1:
        res.update(tasks_per_node=1, mpi="srun")
        if t["gpus"]:  # `gpu` asks SLURM for GPUs per job; `gres` asks per node
            del res["gpu"]
            res["gres"] = f"gpu:{t['gpus']}"
    return res


def train_srun():
    """The command prefix that starts one launcher per node of a multi-node training job."""
    return "srun --ntasks-per-node=1 --kill-on-bad-exit=1 " if config["training"]["nodes"] > 1 else ""


def train_threads():
    """CPU threads a training job uses (all its processes together)."""
    return max(train_processes(), config["training"]["threads"])


def stage(name):
    """A row of the stage table (infodissect.stages.STAGES): ports, settings, figures, captions."""
    from infodissect.stages import STAGES

    return STAGES[name]


def stage_settings(name):
    """JSON (sorted keys) of an analysis stage's settings in the config (its --spec)."""
    return stage(name).settings_json(config)


def stage_figure(name, output="figure"):
    """report() of a stage's figure: its path pattern, caption and report category, from the stage table."""
    fig = next(f for f in stage(name).figures if f.output == output)
    return report(fig.path, caption=f"../report/{fig.caption}.rst", category=name.capitalize())


def profile_inputs(wildcards):
    """A model's MI store on a set and, when pixels are measured, the set's pixel MI store."""
    inputs = {"mi": f"results/mi/{wildcards.model}/{wildcards.set}.zarr"}
    if config["mi"]["pixels"]:
        inputs["pixels"] = f"results/mi/pixels/{wildcards.set}.zarr"
    return inputs


def dissection_inputs(wildcards):
    """A model's activations, stimuli, weights and snapshots for a dissected set. Not its MI store: the
    dissection runs beside the MI stage, and the report joins the two (each detector's most informative
    factor). No snapshots for an adversarial set: it is dissected to compare the trained network's labels
    with those on the source images, not across training."""
    from infodissect.config import adversarial_set_names

    across_training = wildcards.set not in adversarial_set_names(config)
    return {"activations": f"results/activations/{wildcards.model}/{wildcards.set}.zarr",
            "stimuli": f"results/stimuli/{wildcards.set}.zarr",
            "model": f"results/models/{wildcards.model}/model.pt",
            "snapshots": snapshot_paths(wildcards.model) if across_training else []}


def caption(name):
    """Absolute path of a figure caption (workflow/report/{name}.rst), shared by report() and report.html."""
    return os.path.join(workflow.basedir, "workflow", "report", f"{name}.rst")


def visibility_inputs(wildcards=None):
    """Inputs of the factor-visibility analysis: the pixel MI store of the first of mi.sets (when pixels are
    measured) and the outputs of every trained model (held-out evaluation where there is one)."""
    inputs = {}
    if config["mi"]["pixels"] and config["mi"]["sets"]:
        inputs["pixels"] = f"results/mi/pixels/{config['mi']['sets'][0]}.zarr"
    for model in model_names():
        inputs[f"{model}_metrics"] = f"results/models/{model}/metrics.csv"
        inputs[f"{model}_factors"] = f"results/models/{model}/accuracy_by_factor.csv"
        if model in heldout_models():
            inputs[f"{model}_heldout"] = f"results/models/{model}/heldout.json"
    return inputs


def _per_model_stages():
    """The analysis stages run for each analysed model, in the stage table's (and the report's) order."""
    from infodissect.stages import STAGES

    return [st for st in STAGES.values() if st.per_model and st.group == "analyses"]


def stage_models(st):
    """The models a per-model stage runs for: its models key ([] = every trained model) or function of the
    config, else the analysed ones."""
    if callable(st.models):
        return st.models(config)
    if st.models:
        chosen = config_value(st.models)
        return [m for m in model_names() if not chosen or m in chosen]
    return analysed_models()


def config_value(key):
    from infodissect.stages import config_value as value

    return value(config, key)


def relevance_models():
    """The models the relevance stage explains (relevance.models, or every trained model)."""
    return stage_models(stage("relevance"))


def relevance_inputs(wildcards):
    """A model's weights and the set's stimuli; for an analysed model with reverse correlation, its features."""
    inputs = {"model": f"results/models/{wildcards.model}/model.pt", "stimuli": f"results/stimuli/{wildcards.set}.zarr"}
    if config["analyses"]["revcorr_set"] and wildcards.model in analysed_models():
        inputs["revcorr"] = f"results/analyses/{wildcards.model}/revcorr.zarr"
    return inputs


def relevance_compare_inputs(wildcards):
    """Every explained model's relevance store of a set, their weights and the set's stimuli."""
    models = relevance_models()
    return {"relevance": [f"results/relevance/{m}/{wildcards.set}.zarr" for m in models],
            "models": [f"results/models/{m}/model.pt" for m in models],
            "stimuli": f"results/stimuli/{wildcards.set}.zarr"}


def compare_relevance():
    """Whether the relevance maps of several models are compared (relevance.sets and two models or more)."""
    return stage("relevance_compare").enabled(config) and len(relevance_models()) >= 2


def adversarial_inputs(wildcards):
    """The source set's stimuli, the ensemble's and the transfer models' weights (config.adversarial_models)."""
    from infodissect.config import adversarial_models

    ensemble, transfer = adversarial_models(config)
    return {"stimuli": f"results/stimuli/{wildcards.set}.zarr",
            "models": [f"results/models/{m}/model.pt" for m in ensemble],
            "transfer": [f"results/models/{m}/model.pt" for m in transfer]}


def adversarial_sets(set_name="{set}"):
    """The adversarial stimulus stores of a source set, one per budget (results/stimuli/{set}_adv_{budget}.zarr)."""
    return [f"results/stimuli/{set_name}_adv_{b}.zarr" for b in config["adversarial"]["budgets"]]


def consistency_inputs(wildcards):
    """An analysed model's activations on the source set and on each of its adversarial sets, those sets'
    stimulus stores (the example images) and its dissection of them (dissected_adversarial_sets)."""
    return {"activations": f"results/activations/{wildcards.model}/{wildcards.set}.zarr",
            "adversarial": [p.replace("results/stimuli/", f"results/activations/{wildcards.model}/")
                            for p in adversarial_sets(wildcards.set)],
            "stimuli": f"results/stimuli/{wildcards.set}.zarr",
            "adversarial_stimuli": adversarial_sets(wildcards.set),
            "dissection": dissected_adversarial_sets(wildcards.model, wildcards.set)}


def dissected_adversarial_sets(model, set_name):
    """The model's dissection stores of a set's adversarial sets, when the budget-0 set (the real reference) and
    another are among dissection.sets; else none."""
    names = [f"{set_name}_adv_{b}" for b in config["adversarial"]["budgets"]]
    dissected = [n for n in names if n in config["dissection"]["sets"]]
    if f"{set_name}_adv_0" not in dissected or len(dissected) < 2:
        return []
    return [stage("dissection").store.format(model=model, set=n) for n in dissected]


def adversarial_compare_inputs(wildcards):
    """The consistency stores of every model whose units the set's attack is measured on, their metrics.csv and
    the attack's summary store."""
    from infodissect.config import consistency_models

    models = consistency_models(config)
    return {"consistency": [stage("adversarial_consistency").store.format(model=m, set=wildcards.set) for m in models],
            "metrics": [f"results/models/{m}/metrics.csv" for m in models],
            "summary": stage("adversarial").store.format(set=wildcards.set)}


def compare_adversarial():
    """Whether the units' consistency is compared across models (adversarial.sets and two such models or more)."""
    from infodissect.config import consistency_models

    return attacked() and len(consistency_models(config)) >= 2


def attacked():
    """Whether the adversarial stage runs (adversarial.sets and a trained model)."""
    return stage("adversarial").enabled(config) and bool(model_names())


def _stage_figures(st, model=None):
    return [(p, caption(c), w) for p, c, w in st.figure_paths(config, model)]


def report_figures():
    """Sections of report.html: (title, [(figure path, caption file, wildcards)])."""
    sections = [("Stimuli", stimulus_figures())]
    if model_names():
        sections.append(("Factor visibility", _stage_figures(stage("visibility"))))
    for model in model_names():
        figs = [(f"results/figures/{model}_training.png", caption("training"), {"model": model})]
        for st in _per_model_stages():
            if model in stage_models(st):
                figs += _stage_figures(st, model)
        sections.append((f"Model {model}", figs))
    if compare_relevance():
        sections.append(("Relevance across models", _stage_figures(stage("relevance_compare"))))
    if attacked():
        figs = _stage_figures(stage("adversarial"))
        if compare_adversarial():
            figs += _stage_figures(stage("adversarial_compare"))
        sections.append(("Adversarial sets", figs))
    return [(title, figs) for title, figs in sections if figs]


def report_models():
    """Per model, the files behind the report's table of key numbers (keyed by stage name for the analyses)."""
    out = {}
    analysed = analysed_models()
    for model in model_names():
        inputs = {"metrics": f"results/models/{model}/metrics.csv"}
        if model in heldout_models():
            inputs["heldout"] = f"results/models/{model}/heldout.json"
        for st in _per_model_stages():
            path = st.store_path(config, model) if model in stage_models(st) else None
            if path:
                inputs[st.name] = path
        if model in analysed:
            dissected = config["dissection"]["sets"][:1]
            if dissected and dissected[0] in config["mi"]["sets"]:  # the report's dissection x MI table
                inputs["mi"] = f"results/mi/{model}/{dissected[0]}.zarr"
        out[model] = inputs
    return out


def report_spec():
    """JSON of report.html: title, the models' key-number inputs and the figure sections."""
    sections = [{"title": title, "figures": [{"path": p, "caption": c, "wildcards": w} for p, c, w in figs]}
                for title, figs in report_figures()]
    for section in sections:
        if section["title"] == "Factor visibility":
            section["visibility"] = stage("visibility").store  # its table of numbers
        if section["title"] == "Relevance across models":
            section["stores"] = {"relevance_compare": stage("relevance_compare").store_path(config)}
        if section["title"] == "Adversarial sets":
            section["stores"] = {"adversarial": stage("adversarial").store_path(config)}
            if compare_adversarial():
                section["stores"]["adversarial_compare"] = stage("adversarial_compare").store_path(config)
        if section["title"].startswith("Model "):
            section["model"] = section["title"][len("Model "):]  # its stages' tables (report_tables)
    intro = ("infodissect: what each layer, unit and pixel of a face-identity network carries about the factors "
             "that generated its input (after Xu et al., arXiv:1811.07807).")
    return json.dumps({"title": "infodissect report", "intro": intro, "models": report_models(),
                       "sections": sections}, sort_keys=True)


def report_inputs():
    """Every file report.html is built from (figures, captions, key-number inputs)."""
    files = [p for _, figs in report_figures() for p, _, _ in figs]
    files += sorted({c for _, figs in report_figures() for _, c, _ in figs})
    files += [p for inputs in report_models().values() for p in inputs.values()]
    if model_names():
        files.append(stage("visibility").store)
    if compare_relevance():
        files.append(stage("relevance_compare").store_path(config))
    if attacked():
        files.append(stage("adversarial").store_path(config))
    if compare_adversarial():
        files.append(stage("adversarial_compare").store_path(config))
    return files


def all_targets():
    """Every final output of the stages that exist so far (inputs of `rule all`)."""
    names = set_names()
    t = config["training"]
    on_the_fly = t["source"] == "rendered" and t["models"]
    # A training set rendered on the fly is never stored.
    targets = [f"results/stimuli/{name}.zarr" for name in names if not (on_the_fly and name == t["train_set"])]
    targets += [path for path, _, _ in stimulus_figures()]
    for model in model_names():
        targets += [f"results/models/{model}/model.pt", f"results/figures/{model}_training.png"]
    targets += [f"results/models/{model}/heldout.json" for model in heldout_models()]
    for model in analysed_models():
        targets += [f"results/activations/{model}/{s}.zarr" for s in config["activations"]["sets"]]
        targets += [f"results/mi/{model}/{s}.zarr" for s in config["mi"]["sets"]]
    if attacked():
        for s in config["adversarial"]["sets"]:
            targets += adversarial_sets(s)
    if model_names():
        targets += [stage("visibility").store, *(p for p, _, _ in stage("visibility").figure_paths(config)),
                    "results/report.html"]
    return targets
