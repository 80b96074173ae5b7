# Stage 2, training: ResNet-10 models on a stimulus set, launched with torchrun.
# `training.processes` processes per model (Gloo on CPU); with `training.gpus` > 0,
# one process per GPU (NCCL), and the cluster profile requests the GPUs. With
# `training.nodes` > 1 the job spans nodes: srun starts one launcher per node and
# their torchruns meet at a c10d rendezvous on the first node.
# Checkpoints live in results/checkpoints/{model}/, which Snakemake does not manage,
# so a killed job resumes there when rerun; the outputs appear when training ends.


wildcard_constraints:
    model=r"[a-z][a-z0-9]*_s\d+",


rule train_model:
    """Train one model (name '<task>_s<seed>') on the training set; evaluate on the test set."""
    input:
        train=train_input,
        test=f"results/stimuli/{config['training']['test_set']}.zarr",
    output:
        model="results/models/{model}/model.pt",
        metrics="results/models/{model}/metrics.csv",
        factors="results/models/{model}/accuracy_by_factor.csv",
        snapshots=snapshot_paths(),
    params:
        spec=lambda wildcards: train_spec(wildcards.model),
        nproc=train_processes(),
        per_proc=lambda wildcards, threads: max(1, threads // train_processes()),
        checkpoints="results/checkpoints/{model}",
        checkpoint_steps=config["training"]["checkpoint_steps"],
        nodes=config["training"]["nodes"],
        port=config["training"]["rdzv_port"],
        srun=train_srun(),
    threads: train_threads()
    resources:
        **train_resources(),
    priority: critical_path
    log:
        "results/logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train/{model}.tsv"
    shell:
        "OMP_NUM_THREADS={params.per_proc} {params.srun}infodissect train launch --nodes {params.nodes}"
        " --nproc-per-node {params.nproc} --port {params.port} -- --spec {params.spec:q}"
        " --train {input.train} --test {input.test} --out results/models/{wildcards.model}"
        " --checkpoints {params.checkpoints} --checkpoint-steps {params.checkpoint_steps} --threads {params.per_proc}"
        " > {log} 2>&1"


rule train_figure:
    """Training curves and test-set accuracy by factor."""
    input:
        metrics="results/models/{model}/metrics.csv",
        factors="results/models/{model}/accuracy_by_factor.csv",
    output:
        report("results/figures/{model}_training.png", caption="../report/training.rst", category="Training"),
    log:
        "results/logs/train/figure_{model}.log",
    benchmark:
        "results/benchmarks/train/figure_{model}.tsv"
    shell:
        "infodissect train figure --metrics {input.metrics} --factors {input.factors}"
        " --title {wildcards.model} --out {output} > {log} 2>&1"


rule train_evaluate:
    """Accuracy of a trained model (task other than identity) on the held-out identities of
    training.heldout_set: people it never saw, so it must read the factor, not recognise the person."""
    input:
        unpack(heldout_input),
    output:
        "results/models/{model}/heldout.json",
    params:
        batch=config["training"]["batch_size"],
        device="auto" if config["training"]["gpus"] else "cpu",
    threads: config["training"]["threads"]
    resources:
        gpu=min(1, config["training"]["gpus"]),
        mem_mb=4096,
    log:
        "results/logs/train/evaluate_{model}.log",
    benchmark:
        "results/benchmarks/train/evaluate_{model}.tsv"
    shell:
        "infodissect train evaluate --model {input.model} --stimuli {input.stimuli} --train {input.train}"
        " --name {wildcards.model} --batch-size {params.batch} --device {params.device} --threads {threads}"
        " --out {output} > {log} 2>&1"
