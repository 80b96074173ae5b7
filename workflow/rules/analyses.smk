# Stage 5, analyses: factor visibility (pixel MI and classifier accuracy per factor), the
# layer profile, unit and spatial MI figures, the generalisation test on the morph set, and
# the HTML report of everything.


rule analyses_profile:
    """Layer profile (pixels to logits), unit x factor matrices and spatial MI maps of a model on a set."""
    input:
        unpack(profile_inputs),
    output:
        profile=directory(stage("profile").store),
        layer_profile=stage_figure("profile", "profile_figure"),
        units=stage_figure("profile", "units_figure"),
        maps=stage_figure("profile", "maps_figure"),
    params:
        pixels=lambda wildcards, input: f"--pixels {input.pixels}" if "pixels" in input.keys() else "",
    log:
        "results/logs/analyses/{model}/{set}_profile.log",
    benchmark:
        "results/benchmarks/analyses/{model}/{set}_profile.tsv"
    shell:
        "infodissect analyses profile --mi {input.mi} {params.pixels} --out {output.profile}"
        " --profile-figure {output.layer_profile} --units-figure {output.units} --maps-figure {output.maps}"
        " --title '{wildcards.model} on {wildcards.set}' > {log} 2>&1"


rule analyses_generalisation:
    """The network's response along shape-only, texture-only and joint identity morphs."""
    input:
        f"results/activations/{{model}}/{config['analyses']['morph_set']}.zarr",
    output:
        summary=directory(stage("generalisation").store),
        figure=stage_figure("generalisation"),
    log:
        "results/logs/analyses/{model}/generalisation.log",
    benchmark:
        "results/benchmarks/analyses/{model}/generalisation.tsv"
    shell:
        "infodissect analyses generalisation --activations {input} --out {output.summary}"
        " --figure {output.figure} --title {wildcards.model} > {log} 2>&1"


rule analyses_revcorr:
    """Reverse correlation: the vertices whose shape and texture drive the network's identity evidence,
    and every layer's information about those diagnostic features."""
    input:
        activations=f"results/activations/{{model}}/{config['analyses']['revcorr_set']}.zarr",
        stimuli=f"results/stimuli/{config['analyses']['revcorr_set']}.zarr",
    output:
        maps=directory("results/analyses/{model}/revcorr.zarr"),
        features=directory("results/analyses/{model}/features.zarr"),
        figure=stage_figure("revcorr"),
        features_figure=stage_figure("revcorr", "features_figure"),
    params:
        spec=stage_settings("revcorr"),
    threads: config["mi"]["threads"]
    resources:
        mem_mb=config["mi"]["mem_mb"],
    log:
        "results/logs/analyses/{model}/revcorr.log",
    benchmark:
        "results/benchmarks/analyses/{model}/revcorr.tsv"
    shell:
        "infodissect analyses revcorr --activations {input.activations} --stimuli {input.stimuli}"
        " --spec {params.spec:q} --threads {threads} --out {output.maps} --figure {output.figure}"
        " --features {output.features} --features-figure {output.features_figure}"
        " --title {wildcards.model} > {log} 2>&1"


rule analyses_pose:
    """Pose invariance: identity information within, across and given pose, and cross-pose read-outs, per layer."""
    input:
        f"results/activations/{{model}}/{config['analyses']['pose_set']}.zarr",
    output:
        summary=directory(stage("pose").store),
        figure=stage_figure("pose"),
    params:
        spec=stage_settings("pose"),
    threads: config["mi"]["threads"]
    log:
        "results/logs/analyses/{model}/pose.log",
    benchmark:
        "results/benchmarks/analyses/{model}/pose.tsv"
    shell:
        "infodissect analyses pose --activations {input} --spec {params.spec:q} --threads {threads}"
        " --out {output.summary} --figure {output.figure} --title {wildcards.model} > {log} 2>&1"


rule analyses_visibility:
    """Factor visibility: per factor, the pixel MI (largest, share of pixels above the permutation threshold)
    and the held-out accuracy of every classifier the pipeline trained, against chance."""
    input:
        unpack(visibility_inputs),
    output:
        store=directory(stage("visibility").store),
        figure=stage_figure("visibility"),
    params:
        pixels=lambda wildcards, input: f"--pixels {input.pixels}" if "pixels" in input.keys() else "",
        models=" ".join(f"results/models/{m}" for m in model_names()),
        heldout=lambda wildcards, input: " ".join(input[k] for k in input.keys() if k.endswith("_heldout")),
    log:
        "results/logs/analyses/visibility.log",
    benchmark:
        "results/benchmarks/analyses/visibility.tsv"
    shell:
        "infodissect analyses visibility {params.pixels} --models {params.models} --heldout {params.heldout}"
        " --out {output.store}"
        " --figure {output.figure} > {log} 2>&1"


rule analyses_relevance:
    """Relevance propagation of a model's true-class logit on a set, validated by masking, per face part."""
    input:
        unpack(relevance_inputs),
    output:
        store=directory(stage("relevance").store),
        figure=stage_figure("relevance"),
        masking_figure=stage_figure("relevance", "masking_figure"),
        parts_figure=stage_figure("relevance", "parts_figure"),
    params:
        spec=stage_settings("relevance"),
        revcorr=lambda wildcards, input: f"--revcorr {input.revcorr}" if "revcorr" in input.keys() else "",
    threads: config["mi"]["threads"]
    log:
        "results/logs/relevance/{model}/{set}.log",
    benchmark:
        "results/benchmarks/relevance/{model}/{set}.tsv"
    shell:
        "infodissect analyses relevance --model {input.model} --stimuli {input.stimuli} {params.revcorr}"
        " --spec {params.spec:q}"
        " --threads {threads} --out {output.store} --figure {output.figure}"
        " --masking-figure {output.masking_figure} --parts-figure {output.parts_figure}"
        " --title '{wildcards.model} on {wildcards.set}' > {log} 2>&1"


rule analyses_relevance_compare:
    """The relevance maps of every explained model on a set compared: map correlation, cross-model masking."""
    input:
        unpack(relevance_compare_inputs),
    output:
        store=directory(stage("relevance_compare").store),
        figure=stage_figure("relevance_compare"),
    params:
        spec=stage_settings("relevance_compare"),
    threads: config["mi"]["threads"]
    log:
        "results/logs/relevance/{set}_across_models.log",
    benchmark:
        "results/benchmarks/relevance/{set}_across_models.tsv"
    shell:
        "infodissect analyses relevance_compare --relevance {input.relevance} --models {input.models}"
        " --stimuli {input.stimuli} --spec {params.spec:q} --threads {threads} --out {output.store}"
        " --figure {output.figure} > {log} 2>&1"


rule analyses_adversarial:
    """Adversarial sets of a stimulus set: the ensemble attack at every budget, success and transfer."""
    input:
        unpack(adversarial_inputs),
    output:
        sets=[directory(p) for p in adversarial_sets()],
        store=directory(stage("adversarial").store),
        figure=stage_figure("adversarial"),
    wildcard_constraints:
        set="|".join(config["adversarial"]["sets"]),
    params:
        spec=stage_settings("adversarial"),
        transfer=lambda wildcards, input: f"--transfer {' '.join(input.transfer)}" if input.transfer else "",
    threads: config["mi"]["threads"]
    log:
        "results/logs/adversarial/{set}.log",
    benchmark:
        "results/benchmarks/adversarial/{set}.tsv"
    shell:
        "infodissect analyses adversarial --stimuli {input.stimuli} --models {input.models} {params.transfer}"
        " --spec {params.spec:q} --threads {threads} --out {output.sets} --summary {output.store}"
        " --figure {output.figure} --title '{wildcards.set}' > {log} 2>&1"


rule analyses_adversarial_consistency:
    """Consistency of an analysed model's unit semantics between a set's real and adversarial images."""
    input:
        unpack(consistency_inputs),
    output:
        store=directory(stage("adversarial_consistency").store),
        figure=stage_figure("adversarial_consistency"),
        maps_figure=stage_figure("adversarial_consistency", "maps_figure"),
    wildcard_constraints:
        set="|".join(config["adversarial"]["sets"]),
    params:
        spec=stage_settings("adversarial_consistency"),
        dissection=lambda wildcards, input: f"--dissection {' '.join(input.dissection)}" if input.dissection else "",
    threads: config["mi"]["threads"]
    log:
        "results/logs/adversarial/{model}/{set}_consistency.log",
    benchmark:
        "results/benchmarks/adversarial/{model}/{set}_consistency.tsv"
    shell:
        "infodissect analyses adversarial_consistency --activations {input.activations}"
        " --adversarial {input.adversarial} --stimuli {input.stimuli}"
        " --adversarial-stimuli {input.adversarial_stimuli} {params.dissection} --spec {params.spec:q}"
        " --threads {threads}"
        " --out {output.store} --figure {output.figure} --maps-figure {output.maps_figure}"
        " --title '{wildcards.model} on {wildcards.set}' > {log} 2>&1"


rule analyses_adversarial_compare:
    """The consistency of several models' unit semantics on the same adversarial images, side by side."""
    input:
        unpack(adversarial_compare_inputs),
    output:
        store=directory(stage("adversarial_compare").store),
        figure=stage_figure("adversarial_compare"),
    wildcard_constraints:
        set="|".join(config["adversarial"]["sets"]),
    params:
        spec=stage_settings("adversarial_compare"),
    threads: 1
    log:
        "results/logs/adversarial/{set}_across_models.log",
    benchmark:
        "results/benchmarks/adversarial/{set}_across_models.tsv"
    shell:
        "infodissect analyses adversarial_compare --consistency {input.consistency} --metrics {input.metrics}"
        " --summary {input.summary} --spec {params.spec:q} --threads {threads} --out {output.store}"
        " --figure {output.figure} --title '{wildcards.set}' > {log} 2>&1"


rule report:
    """results/report.html: every figure with its caption and the key numbers of every model."""
    input:
        report_inputs(),
    output:
        "results/report.html",
    params:
        spec=report_spec(),
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    shell:
        "infodissect report --spec {params.spec:q} --out {output} > {log} 2>&1"


localrules:
    report,


rule analyses_dissection:
    """Network dissection of a model's map layers on a set against the rendered part maps, with its baselines."""
    input:
        unpack(dissection_inputs),
    output:
        store=directory(stage("dissection").store),
        tally="results/dissection/{model}/{set}_tally.csv",
        figure=stage_figure("dissection"),
        units_figure=stage_figure("dissection", "units_figure"),
    params:
        spec=stage_settings("dissection"),
        snapshots=lambda wildcards, input: " ".join(["--snapshots", *input.snapshots]) if input.snapshots else "",
    threads: config["mi"]["threads"]
    log:
        "results/logs/dissection/{model}/{set}.log",
    benchmark:
        "results/benchmarks/dissection/{model}/{set}.tsv"
    shell:
        "infodissect analyses dissection --activations {input.activations} --stimuli {input.stimuli}"
        " --model {input.model} {params.snapshots} --spec {params.spec:q} --threads {threads} --out {output.store}"
        " --tally {output.tally} --figure {output.figure} --units-figure {output.units_figure}"
        " --title '{wildcards.model} on {wildcards.set}' > {log} 2>&1"
