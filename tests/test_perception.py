"""benchmarks/perception.py's blind-set bookkeeping (issue 12): the key never lands where the rater looks,
and a rater's answers are refused, naming the image, when they do not cover the key in its words."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def perception():
    spec = importlib.util.spec_from_file_location("perception", ROOT / "benchmarks" / "perception.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_key_goes_beside_the_folder_or_where_asked_but_never_inside_it(perception, tmp_path):
    out = tmp_path / "set"
    assert perception.key_path(out) == tmp_path / "set.key.json"
    assert perception.key_path(out, tmp_path / "keys" / "k.json") == tmp_path / "keys" / "k.json"
    with pytest.raises(SystemExit, match="inside the rater's folder"):
        perception.key_path(out, out / "sub" / "k.json")
    with pytest.raises(SystemExit, match="a folder; give the key file's path"):
        perception.key_path(out, tmp_path)


def test_a_set_with_its_key_inside_the_folder_is_refused_before_anything_is_drawn(perception, tmp_path):
    out = tmp_path / "set"
    with pytest.raises(SystemExit, match="inside the rater's folder"):
        perception.render_set(out, 7, 1, 64, key_file=out / "k.json")
    assert not out.exists()


def _answers(path: Path, rows: list[str]) -> Path:
    path.write_text("file,expression,gender,age,realism,confidence\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("rows, message", [
    (["face_00.png,anger,male,30,cg-person,high"], r"missing \['face_01.png'\]"),
    (["face_00.png,anger,male,30,cg-person,high", "face_00.png,anger,male,30,cg-person,high",
      "face_01.png,fear,female,40,photo,low"], r"answered twice \['face_00.png'\]"),
    (["face_00.png,anger,male,30,cg-person,high", "face_01.png,contempt,female,40,photo,low"],
     "face_01.png: expression 'contempt' is not one of"),
    (["face_00.png,anger,male,thirty,cg-person,high", "face_01.png,fear,female,40,photo,low"],
     "face_00.png: age 'thirty' is not a number"),
])
def test_answers_that_do_not_cover_the_key_in_its_words_are_refused(perception, tmp_path, rows, message):
    key = {"face_00.png": {}, "face_01.png": {}}
    with pytest.raises(SystemExit, match=message):
        perception.read_answers(_answers(tmp_path / "a.csv", rows), key)


def test_well_formed_answers_are_read_lower_cased(perception, tmp_path):
    rows = perception.read_answers(_answers(tmp_path / "a.csv", ["face_00.png,Anger,MALE,30,cg-person,high",
                                                                 "face_01.png,fear,female,40.5,photo,low"]),
                                   {"face_00.png": {}, "face_01.png": {}})
    assert [(r["expression"], r["gender"]) for r in rows] == [("anger", "male"), ("fear", "female")]
