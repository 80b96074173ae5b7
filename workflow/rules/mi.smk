# Stage 4, MI: Gaussian-copula MI between every layer (and the pixels) and every
# generative factor, with maximum-statistic permutation thresholds, on a Dask
# scheduler (mi.scheduler: an in-process local cluster by default, or tcp://host:port).


rule mi_layers:
    """MI of every unit (at every position) of every layer of a model with every factor of a set."""
    input:
        "results/activations/{model}/{set}.zarr",
    output:
        directory("results/mi/{model}/{set}.zarr"),
    params:
        spec=stage_settings("mi_layers"),
    threads: config["mi"]["threads"]
    resources:
        mem_mb=config["mi"]["mem_mb"],
    priority: critical_path
    log:
        "results/logs/mi/{model}/{set}.log",
    benchmark:
        "results/benchmarks/mi/{model}/{set}.tsv"
    shell:
        "infodissect mi layers --activations {input} --spec {params.spec:q} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule mi_pixels:
    """MI of every pixel of a stimulus set with every factor: the information in the input itself."""
    input:
        "results/stimuli/{set}.zarr",
    output:
        directory("results/mi/pixels/{set}.zarr"),
    params:
        spec=stage_settings("mi_pixels"),
    threads: config["mi"]["threads"]
    resources:
        mem_mb=config["mi"]["mem_mb"],
    log:
        "results/logs/mi/pixels/{set}.log",
    benchmark:
        "results/benchmarks/mi/pixels/{set}.tsv"
    shell:
        "infodissect mi pixels --stimuli {input} --spec {params.spec:q} --threads {threads}"
        " --out {output} > {log} 2>&1"
