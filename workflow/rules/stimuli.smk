# Stage 1, stimuli: factor design -> factor table -> rendered images -> figures.
# Every rule calls the `infodissect` CLI; all logic lives in the package.


wildcard_constraints:
    set=r"[a-z][a-z0-9_]*",
    shard=r"\d+",


rule stimuli_design:
    """Draw the factor table (factors and identity codes) of one stimulus set."""
    output:
        directory("results/stimuli/designs/{set}.zarr"),
    params:
        spec=lambda wildcards: stage_spec(wildcards.set),
    priority: critical_path
    log:
        "results/logs/stimuli/design/{set}.log",
    benchmark:
        "results/benchmarks/stimuli/design/{set}.tsv"
    shell:
        "infodissect stimuli design --set {wildcards.set} --spec {params.spec:q}"
        " --out {output} > {log} 2>&1"


rule stimuli_render:
    """Render one shard (render.shard_size rows) of a set's factor table."""
    input:
        "results/stimuli/designs/{set}.zarr",
    output:
        temp(directory("results/stimuli/shards/{set}/{shard}.zarr")),
    params:
        spec=render_spec(),
    threads: 2
    resources:
        mem_mb=render_mem_mb(),
    priority: critical_path
    log:
        "results/logs/stimuli/render/{set}/{shard}.log",
    benchmark:
        "results/benchmarks/stimuli/render/{set}/{shard}.tsv"
    shell:
        "infodissect stimuli render --design {input} --shard {wildcards.shard}"
        " --spec {params.spec:q} --threads {threads} --out {output} > {log} 2>&1"


rule stimuli_gather:
    """Join a set's rendered shards and its factor table into one dataset."""
    input:
        design="results/stimuli/designs/{set}.zarr",
        shards=lambda wildcards: shard_paths(wildcards.set),
    output:
        directory("results/stimuli/{set}.zarr"),
    wildcard_constraints:
        set="|".join(set_names()),  # the configured sets (adversarial sets come from analyses_adversarial)
    priority: critical_path
    log:
        "results/logs/stimuli/gather/{set}.log",
    benchmark:
        "results/benchmarks/stimuli/gather/{set}.tsv"
    shell:
        "infodissect stimuli gather --design {input.design} --out {output}"
        " {input.shards} > {log} 2>&1"


rule stimuli_figure_factors:
    """Figure of the factor sweeps (the `sweeps` set): what each factor does."""
    input:
        "results/stimuli/sweeps.zarr",
    output:
        report(
            "results/figures/stimuli_factors.png",
            caption="../report/stimuli_factors.rst",
            category="Stimuli",
        ),
    log:
        "results/logs/stimuli/figure_factors.log",
    benchmark:
        "results/benchmarks/stimuli/figure_factors.tsv"
    shell:
        "infodissect stimuli figure factors --stimuli {input} --out {output} > {log} 2>&1"


rule stimuli_figure_identities:
    """Figure of the portraits (the `portraits` set): a sample of identities."""
    input:
        "results/stimuli/portraits.zarr",
    output:
        report(
            "results/figures/stimuli_identities.png",
            caption="../report/stimuli_identities.rst",
            category="Stimuli",
        ),
    log:
        "results/logs/stimuli/figure_identities.log",
    benchmark:
        "results/benchmarks/stimuli/figure_identities.tsv"
    shell:
        "infodissect stimuli figure identities --stimuli {input} --out {output} > {log} 2>&1"


rule stimuli_figure_resolution:
    """A stimulus figure at another resolution (stimuli.figures.resolutions): the `sweeps` or
    `portraits` design rendered for it."""
    input:
        lambda wildcards: f"results/stimuli/designs/{'sweeps' if wildcards.kind == 'factors' else 'portraits'}.zarr",
    output:
        report(
            "results/figures/stimuli_{kind}_{res}.png",
            caption="../report/stimuli_{kind}.rst",
            category="Stimuli",
        ),
    wildcard_constraints:
        kind="factors|identities|portraits",
        res=r"\d+",
    params:
        spec=render_spec(),
    threads: 2
    log:
        "results/logs/stimuli/figure_{kind}_{res}.log",
    benchmark:
        "results/benchmarks/stimuli/figure_{kind}_{res}.tsv"
    shell:
        "infodissect stimuli figure {wildcards.kind} --design {input} --spec {params.spec:q}"
        " --resolution {wildcards.res} --threads {threads} --out {output} > {log} 2>&1"
