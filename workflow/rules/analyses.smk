# Stage 5, analyses: the layer profile, unit and spatial MI figures, the generalisation
# test on the morph set, and the HTML report of everything.


rule analyses_profile:
    """Layer profile (pixels to logits), unit x factor matrices and spatial MI maps of a model on a set."""
    input:
        unpack(profile_inputs),
    output:
        profile=directory("results/analyses/{model}/{set}_profile.zarr"),
        layer_profile=report("results/figures/{model}_{set}_layer_profile.png",
                             caption="../report/layer_profile.rst", category="Information"),
        units=report("results/figures/{model}_{set}_units.png", caption="../report/units.rst",
                     category="Information"),
        maps=report("results/figures/{model}_{set}_spatial_maps.png", caption="../report/spatial_maps.rst",
                    category="Information"),
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
        summary=directory("results/analyses/{model}/generalisation.zarr"),
        figure=report("results/figures/{model}_generalisation.png", caption="../report/generalisation.rst",
                      category="Generalisation"),
    log:
        "results/logs/analyses/{model}/generalisation.log",
    benchmark:
        "results/benchmarks/analyses/{model}/generalisation.tsv"
    shell:
        "infodissect analyses generalisation --activations {input} --out {output.summary}"
        " --figure {output.figure} --title {wildcards.model} > {log} 2>&1"


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
