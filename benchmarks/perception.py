"""A blind rating set of rendered faces, and the score of a rater's answers (issue 12's perceptual bars).

    python benchmarks/perception.py render OUT [--seed 2028] [--n 42] [--resolution 224]
                                           [--hair short|long] [--key KEY.json]
    python benchmarks/perception.py score OUT/answers.csv OUT.key.json

``render`` draws ``n`` random people of the demo generator (every ethnic group and age, either hair
style, gender_strength from 0.5 to 1, the seven expressions equally often at intensities 0.3-1, small
pose and light changes on a mid-grey background), renders them with the demo's generator and camera
(224 px by default; 64 px images are enlarged 3x, nearest neighbour) and writes them shuffled as
``OUT/face_NN.png``, with the words a rater may answer in ``OUT/README.txt`` and the answer key beside
the folder (``OUT.key.json``, not inside it: a rater is shown the folder only), or at ``--key``: a
path outside any folder a rater with file access can read. OUT must be new or empty. A rater names,
for each image, its expression, gender, age and whether it reads as a photo, a rendered person or a
mannequin, in a CSV ``file,expression,gender,age,realism,confidence``.

``--hair`` gives everyone one hair style: raters who see both styles judge gender by hair length
(hair is a factor of its own, independent of sex), so gender read from the face is measured on sets of
one style. The same seed draws the same people whatever ``--hair``.

``score`` checks that every image has exactly one answer in those words and prints the rater's
accuracy on expression and gender (with chance: 1/7 and 1/2), per expression, the commonest
confusions, how gender calls follow hair length, the age error and the realism counts.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from infodissect.faces.factors import ETHNICITIES, EXPRESSIONS, GENDERS, HAIR_STYLES
from infodissect.faces.model import FaceModel, model_from_config
from infodissect.faces.render import render
from infodissect.stimuli.store import camera_from_config

ROOT = Path(__file__).resolve().parents[1]
REALISM = ("photo", "cg-person", "mannequin")
INSTRUCTIONS = f"""For each image face_NN.png, answer in a CSV file,expression,gender,age,realism,confidence:
expression: one of {", ".join(EXPRESSIONS)}
gender: one of {", ".join(GENDERS)}
age: years, a number
realism: one of {", ".join(REALISM)} (could be a photograph / clearly rendered but a person / a doll, mask
  or mannequin)
confidence (of the expression): high, medium or low
"""


def draw(model: FaceModel, n: int, seed: int, hair: str | None = None) -> dict[str, torch.Tensor]:
    """Factor values of ``n`` people, each expression ``n // 7`` times (``n`` a multiple of 7), all with
    ``hair`` style if given."""
    rng = np.random.default_rng(seed)
    expr = np.repeat(np.arange(len(EXPRESSIONS)), n // len(EXPRESSIONS))
    rng.shuffle(expr)
    styles = rng.integers(0, len(HAIR_STYLES), n)
    if hair is not None:
        styles[:] = HAIR_STYLES.index(hair)

    def f32(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32)

    return {
        "shape_coeff": f32(rng.standard_normal((n, model.shape_basis.shape[0]))),
        "texture_coeff": f32(rng.standard_normal((n, model.texture_basis.shape[0]))),
        "gender": torch.tensor(rng.integers(0, 2, n)), "gender_strength": f32(rng.uniform(0.5, 1.0, n)),
        "ethnicity": torch.tensor(rng.integers(0, len(ETHNICITIES), n)), "age": f32(rng.uniform(20, 70, n)),
        "hair_style": torch.tensor(styles), "expression": torch.tensor(expr),
        "expression_intensity": f32(rng.uniform(0.3, 1.0, n)),
        "yaw": f32(rng.uniform(-12, 12, n)), "pitch": f32(rng.uniform(-5, 5, n)), "roll": torch.zeros(n),
        "light_azimuth": f32(rng.uniform(-45, 45, n)), "light_elevation": f32(rng.uniform(0, 40, n)),
        "light_ambient": f32(rng.uniform(0.25, 0.5, n)), "scale": torch.ones(n), "shift_x": torch.zeros(n),
        "shift_y": torch.zeros(n), "background": torch.full((n,), 0.5),
    }


def key_path(out: Path, key: Path | None = None) -> Path:
    """Where the answer key of the set in folder ``out`` is written: ``key`` if given, else beside the
    folder; never inside it, where the rater would find it."""
    out = out.resolve()
    if key is None:
        return out.with_name(out.name + ".key.json")
    key = key.resolve()
    if key.is_relative_to(out):
        raise SystemExit(f"--key {key}: inside the rater's folder {out}; write it elsewhere")
    if key.is_dir():
        raise SystemExit(f"--key {key}: a folder; give the key file's path")
    return key


def render_set(out: Path, n: int, seed: int, resolution: int, hair: str | None = None,
               key_file: Path | None = None) -> None:
    """Write the shuffled images and the rater's instructions to ``out`` and the key to
    :func:`key_path`."""
    from PIL import Image  # (matplotlib's dependency)

    kp = key_path(out, key_file)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty (a rater would see images the key does not list); give a new folder")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    model = model_from_config(cfg["stimuli"]["generator"], "cpu")
    p = draw(model, n, seed, hair)
    cam = camera_from_config(dict(cfg["stimuli"]["render"], resolution=resolution))
    with torch.inference_mode():
        img, _ = render(model, p, cam)
    order = np.random.default_rng(seed + 1).permutation(n)
    out.mkdir(parents=True, exist_ok=True)
    key = []
    for k, i in enumerate(order):
        im = Image.fromarray(img[i].numpy())
        if resolution < 128:
            im = im.resize((3 * resolution, 3 * resolution), Image.NEAREST)
        im.save(out / f"face_{k:02d}.png")
        key.append({"file": f"face_{k:02d}.png", "expression": EXPRESSIONS[int(p["expression"][i])],
                    "gender": GENDERS[int(p["gender"][i])], "age": round(float(p["age"][i]), 1),
                    "hair_style": HAIR_STYLES[int(p["hair_style"][i])],
                    "gender_strength": round(float(p["gender_strength"][i]), 3),
                    "expression_intensity": round(float(p["expression_intensity"][i]), 3),
                    "ethnicity": ETHNICITIES[int(p["ethnicity"][i])]})
    (out / "README.txt").write_text(INSTRUCTIONS)
    kp.parent.mkdir(parents=True, exist_ok=True)
    kp.write_text(json.dumps(key, indent=1))
    print(f"{n} faces at {resolution} px in {out}; key in {kp} (seed {seed})")


def read_answers(answers: Path, key: dict[str, dict]) -> list[dict[str, str]]:
    """The rater's rows, one per image of the key, lower-cased; a clear error for a missing, repeated or
    unknown file, a word outside the allowed ones, or an age that is not a number."""
    rows = [{k: (v or "").strip().lower() for k, v in r.items()} for r in csv.DictReader(answers.open())]
    files = [r.get("file", "") for r in rows]
    missing, extra = sorted(set(key) - set(files)), sorted(set(files) - set(key))
    repeated = sorted(f for f, k in collections.Counter(files).items() if k > 1)
    if missing or extra or repeated:
        raise SystemExit(f"{answers}: missing {missing}, not in the key {extra}, answered twice {repeated}")
    allowed = {"expression": EXPRESSIONS, "gender": GENDERS, "realism": REALISM}
    for r in rows:
        for col, words in allowed.items():
            if r.get(col) not in words:
                raise SystemExit(f"{answers}: {r['file']}: {col} {r.get(col)!r} is not one of {', '.join(words)}")
        try:
            float(r["age"])
        except (KeyError, ValueError):
            raise SystemExit(f"{answers}: {r['file']}: age {r.get('age')!r} is not a number") from None
    return rows


def score(answers: Path, key_file: Path) -> None:
    """Print a rater's accuracies against the key."""
    key = {r["file"]: r for r in json.loads(key_file.read_text())}
    rows = read_answers(answers, key)
    per = collections.defaultdict(lambda: [0, 0])
    confusion, by_hair = collections.Counter(), collections.Counter()
    for r in rows:
        k = key[r["file"]]
        per[k["expression"]][0] += r["expression"] == k["expression"]
        per[k["expression"]][1] += 1
        if r["expression"] != k["expression"]:
            confusion[f"{k['expression']}->{r['expression']}"] += 1
        by_hair[f"{k['gender']}, {k['hair_style']} hair: called {r['gender']}"] += 1
    n = len(key)
    n_expr = sum(c for c, _ in per.values())
    n_gender = sum(r["gender"] == key[r["file"]]["gender"] for r in rows)
    ages = np.asarray([(float(r["age"]), key[r["file"]]["age"]) for r in rows])
    print(f"expression: {n_expr}/{n} = {n_expr / n:.0%} (chance {1 / len(EXPRESSIONS):.0%})")
    print("  per expression: " + ", ".join(f"{e} {per[e][0]}/{per[e][1]}" for e in EXPRESSIONS))
    print("  confusions: " + ", ".join(f"{c} {k}" for c, k in confusion.most_common(6)))
    print(f"gender: {n_gender}/{n} = {n_gender / n:.0%} (chance 50%)")
    for c, k in sorted(by_hair.items()):
        print(f"  {c}: {k}")
    r_age = f"{np.corrcoef(ages.T)[0, 1]:.2f}" if ages[:, 0].std() > 0 else "n/a (one age for all)"
    print(f"age: r = {r_age}, mean absolute error {np.abs(ages[:, 0] - ages[:, 1]).mean():.1f} years")
    realism = collections.Counter(r["realism"] for r in rows)
    print("realism: " + ", ".join(f"{w} {realism[w]}" for w in REALISM))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render a blind set")
    r.add_argument("out", type=Path)
    r.add_argument("--seed", type=int, default=2028)
    r.add_argument("--n", type=int, default=42)
    r.add_argument("--resolution", type=int, default=224)
    r.add_argument("--hair", choices=HAIR_STYLES, default=None, help="one hair style for everyone")
    r.add_argument("--key", type=Path, default=None, help="where to write the answer key (default: OUT.key.json)")
    s = sub.add_parser("score", help="score a rater's answers")
    s.add_argument("answers", type=Path)
    s.add_argument("key", type=Path)
    args = ap.parse_args()
    if args.cmd == "render" and args.n % len(EXPRESSIONS):
        ap.error(f"--n must be a multiple of {len(EXPRESSIONS)}, got {args.n}")
    if args.cmd == "render":
        render_set(args.out, args.n, args.seed, args.resolution, args.hair, args.key)
    else:
        score(args.answers, args.key)


if __name__ == "__main__":
    main()
