# Stage 3, activations: every read-out layer of each trained model on each analysis set.


rule activations_extract:
    """Forward a stimulus set through a trained model; store every read-out layer."""
    input:
        model="results/models/{model}/model.pt",
        stimuli="results/stimuli/{set}.zarr",
    output:
        directory("results/activations/{model}/{set}.zarr"),
    params:
        spec=stage_settings("activations"),
    threads: max(2, config["activations"]["processes"])
    resources:
        mem_mb=4096,
    priority: critical_path
    log:
        "results/logs/activations/{model}/{set}.log",
    benchmark:
        "results/benchmarks/activations/{model}/{set}.tsv"
    shell:
        "infodissect activations extract --model {input.model} --stimuli {input.stimuli}"
        " --spec {params.spec:q} --threads {threads} --out {output} > {log} 2>&1"
