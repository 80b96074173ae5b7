"""The ``infodissect`` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError


def _stimuli_design(a: argparse.Namespace) -> None:
    from .stimuli.design import write_design

    write_design(a.set, json.loads(a.spec), a.out)


def _stimuli_render(a: argparse.Namespace) -> None:
    import torch

    from .stimuli.store import render_shard

    if a.threads:
        torch.set_num_threads(a.threads)
    render_shard(a.design, a.shard, json.loads(a.spec), a.out)


def _stimuli_gather(a: argparse.Namespace) -> None:
    from .stimuli.store import gather_shards

    gather_shards(a.design, a.shards, a.out)


def _stimuli_figure(a: argparse.Namespace) -> None:
    from .stimuli.figures import stimulus_figure

    if a.design and not a.spec:
        raise SystemExit("stimuli figure: --design needs --spec (the render spec)")
    if a.design:
        import torch

        torch.set_num_threads(a.threads)
    stimulus_figure(a.kind, a.out, stimuli=a.stimuli, design=a.design,
                    spec=json.loads(a.spec) if a.spec else None, resolution=a.resolution)


def _train_model(a: argparse.Namespace) -> None:
    import torch

    from .train import TrainSpec, train
    from .train.loop import keep_attempt_log

    if a.threads:
        torch.set_num_threads(a.threads)
    keep_attempt_log(a.checkpoints)
    train(TrainSpec.from_json(a.spec), a.train, a.test, a.out, a.checkpoints, checkpoint_steps=a.checkpoint_steps)


def _train_launch(a: argparse.Namespace) -> None:
    import os
    import shutil

    from .train.launch import torchrun_args

    args = torchrun_args(a.nodes, a.nproc_per_node, os.environ, a.port)
    local = Path(sys.executable).with_name("torchrun")
    torchrun = str(local) if local.exists() else shutil.which("torchrun") or "torchrun"
    rest = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    logging.info("launching: torchrun %s", " ".join(args))
    os.execv(torchrun, [torchrun, *args, "-m", "infodissect.cli", "train", "model", *rest])


def _train_evaluate(a: argparse.Namespace) -> None:
    import torch

    from .threads import resolve_device
    from .train.evaluate import evaluate_model, write_json

    if a.threads:
        torch.set_num_threads(a.threads)
    result = evaluate_model(a.model, a.stimuli, a.train, name=a.name, batch_size=a.batch_size,
                            device=resolve_device(a.device))
    write_json(result, a.out)


def _train_figure(a: argparse.Namespace) -> None:
    from .figures.training import training_figure

    training_figure(a.metrics, a.factors, a.out, title=a.title)


def _activations_info(a: argparse.Namespace) -> None:
    from .activations import describe

    print(describe(a.path))


def _run_stage(a: argparse.Namespace) -> None:
    """Run the stage of the stage table behind ``infodissect <a.stage> <a.command>`` with the parsed ports."""
    from .stages import run_stage, stage_of

    stage = stage_of(a.stage, a.command)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    inputs = {p.name: getattr(a, p.name) for p in stage.inputs}
    outputs = {p.name: getattr(a, p.name) for p in stage.outputs}
    numbers = run_stage(stage.name, json.loads(a.spec), inputs, outputs, title=a.title)
    for key, value in numbers.items():
        logging.info("%s: %s", key, value)


def _add_stage_parsers(stages: argparse._SubParsersAction) -> dict[str, argparse._SubParsersAction]:
    """One group per stage-table group, one subcommand per stage: its ports, --spec, --title, --threads."""
    from .stages import GROUPS, STAGES

    groups = {g: stages.add_parser(g, help=text).add_subparsers(dest="command", required=True)
              for g, text in GROUPS.items()}
    for stage in STAGES.values():
        sp = groups[stage.group].add_parser(stage.subcommand, help=stage.help)
        for port in stage.inputs:
            kwargs = {"nargs": "*", "default": []} if port.many else {"required": not port.optional, "default": None}
            sp.add_argument(port.flag, dest=port.name, help=port.help, **kwargs)
        for port in stage.outputs:
            sp.add_argument(port.flag, dest=port.name, required=True, help=port.help, nargs="+" if port.many else None)
        if stage.settings:
            sp.add_argument("--spec", default="{}", help=f"JSON: {', '.join(stage.settings)} (defaults: the config "
                                                         f"schema's {', '.join(stage.settings.values())})")
        sp.set_defaults(func=_run_stage, spec="{}")
        sp.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        sp.add_argument("--title", default="", help="figure title prefix")
    return groups


def _report(a: argparse.Namespace) -> None:
    from .report import build_report

    build_report(json.loads(a.spec), a.out)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``infodissect`` command."""
    p = argparse.ArgumentParser(prog="infodissect", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = p.add_subparsers(dest="stage", required=True)
    st = stages.add_parser("stimuli", help="factor designs, rendering and stimulus figures")
    sub = st.add_subparsers(dest="command", required=True)

    d = sub.add_parser("design", help="write the seeded factor table of one set")
    d.add_argument("--set", required=True, help="set name (a key of stimuli.sets)")
    d.add_argument("--spec", required=True, help="JSON: seed, identities, generator, factors, set")
    d.add_argument("--out", required=True, help="output Zarr store")
    d.set_defaults(func=_stimuli_design)

    r = sub.add_parser("render", help="render one shard of a design")
    r.add_argument("--design", required=True)
    r.add_argument("--shard", type=int, required=True)
    r.add_argument("--spec", required=True, help="JSON: generator, render")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    r.add_argument("--out", required=True)
    r.set_defaults(func=_stimuli_render)

    g = sub.add_parser("gather", help="concatenate rendered shards into the set store")
    g.add_argument("--design", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("shards", nargs="+")
    g.set_defaults(func=_stimuli_gather)

    f = sub.add_parser("figure", help="stimulus figures")
    f.add_argument("kind", choices=["factors", "identities", "portraits"])
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--stimuli",
                     help="sweeps store (factors) or portraits store (identities: a gallery; portraits: large portraits)")
    src.add_argument("--design", help="a sweeps or portraits design, rendered for the figure (with --spec)")
    f.add_argument("--spec", help="render spec (JSON) of --design")
    f.add_argument("--resolution", type=int, help="render --design at this resolution instead of the spec's")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--out", required=True)
    f.set_defaults(func=_stimuli_figure)

    tr = stages.add_parser("train", help="train ResNet-10 models (run `model` under torchrun for DDP)")
    tsub = tr.add_subparsers(dest="command", required=True)
    m = tsub.add_parser("model", help="train one model; resumes from --checkpoints")
    m.add_argument("--spec", required=True, help="JSON: task, seed, epochs, batch_size, lr, width, stem ...")
    m.add_argument("--train", required=True, help="training stimulus store")
    m.add_argument("--test", required=True, help="held-out stimulus store")
    m.add_argument("--out", required=True, help="output directory (model.pt, metrics.csv, accuracy_by_factor.csv)")
    m.add_argument("--checkpoints", required=True, help="checkpoint directory (kept across reruns)")
    m.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0 = default)")
    m.add_argument("--checkpoint-steps", type=int, default=0,
                   help="also checkpoint every this many steps within an epoch (0 = after each epoch only)")
    m.set_defaults(func=_train_model)
    la = tsub.add_parser("launch", help="run `train model` under torchrun on this node (standalone or one of "
                                        "--nodes nodes meeting at a c10d rendezvous)")
    la.add_argument("--nodes", type=int, default=1)
    la.add_argument("--nproc-per-node", type=int, default=1)
    la.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node (multi-node)")
    la.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of `train model`")
    la.set_defaults(func=_train_launch)
    ev = tsub.add_parser("evaluate", help="evaluate a trained model on another set (e.g. held-out identities): "
                                          "accuracy, chance, per-class accuracy, confusion matrix -> JSON")
    ev.add_argument("--model", required=True, help="model.pt of the training stage")
    ev.add_argument("--stimuli", required=True, help="rendered stimulus store to evaluate on")
    ev.add_argument("--train", required=True, help="the model's training set (store or design table): the classes "
                                                   "and identities it saw")
    ev.add_argument("--name", default="", help="model name (default: the directory of --model)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ev.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ev.add_argument("--out", required=True, help="output JSON (e.g. results/models/{model}/heldout.json)")
    ev.set_defaults(func=_train_evaluate)
    tf = tsub.add_parser("figure", help="training curves and test-set accuracy by factor")
    tf.add_argument("--metrics", required=True)
    tf.add_argument("--factors", required=True)
    tf.add_argument("--title", default="")
    tf.add_argument("--out", required=True)
    tf.set_defaults(func=_train_figure)

    groups = _add_stage_parsers(stages)  # activations extract, mi, analyses: from the stage table
    i = groups["activations"].add_parser("info", help="print the layers, shapes, chunks and sizes of an "
                                                      "activation store")
    i.add_argument("path")
    i.set_defaults(func=_activations_info)

    rp = stages.add_parser("report", help="the HTML report of every figure and the key numbers")
    rp.add_argument("--spec", required=True, help="JSON: title, intro, models {name: {metrics, heldout, profile, "
                    "generalisation, pose}}, sections [{title, figures [{path, caption, wildcards}], visibility}]")
    rp.add_argument("--out", required=True)
    rp.set_defaults(func=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``infodissect`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .store import StoreError

    try:
        args.func(args)
    except (ConfigError, ValueError, StoreError, FileNotFoundError) as exc:
        logging.getLogger("infodissect").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
