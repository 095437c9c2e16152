"""Shipped task data: contents, rules checked from scratch, and the validating loader."""

from __future__ import annotations

import json

import pytest

from tvlens.llm import make_data
from tvlens.llm.tasks import (
    DATA_DIR,
    SHIPPED_MIN_PAIRS,
    TaskDataError,
    load_task,
    load_task_file,
    load_tasks,
    restrict_inputs,
    task_groups,
    task_names,
)

REQUIRED = {
    "antonym",
    "country_capital",
    "english_french",
    "present_past",
    "singular_plural",
    "uppercase",
    "first_letter",
    "last_letter",
    "next_number",
    "pos_first_noun",
    "pos_first_verb",
    "pos_first_adjective",
    "bitwise_and",
    "bitwise_or",
    "bitwise_xor",
    "null",
}


def test_shipped_tasks_cover_the_issue_and_are_large_enough():
    names = set(task_names())
    assert REQUIRED <= names
    tasks = load_tasks("all")
    assert len(tasks) >= 12
    for t in tasks:
        assert len(t) >= SHIPPED_MIN_PAIRS, t.name
    families = {t.family for t in tasks}
    assert families == {"word", "pos", "bitwise", "null", "novel"}


def test_novel_tasks_follow_their_seeded_rules():
    """The in-context-only tasks: their rules hold, they are reproducible from the seed, and
    another seed gives other mappings (so no model could have memorised them)."""
    tasks = {t.name: t for t in load_tasks("novel")}
    assert set(tasks) == set(make_data.build_novel_tasks())
    antonym = dict(load_task("antonym").pairs)
    assert all(y == antonym[x].upper() for x, y in tasks["novel_antonym_upper"].pairs)
    assert all(y == x[0].upper() for x, y in tasks["novel_first_upper"].pairs)
    plus = {int(y) - int(x) for x, y in tasks["novel_number_plus"].pairs}
    assert len(plus) == 1 and 3 <= plus.pop() <= 9
    colours = {y for _, y in tasks["novel_pos_colour"].pairs}
    assert colours == {"blue", "green", "red"}
    swap = tasks["novel_word_swap"].pairs
    assert all(x != y for x, y in swap) and {y for _, y in swap} == {x for x, _ in swap}
    other = make_data.build_novel_tasks(seed=1)
    assert (
        other["novel_word_swap"]["pairs"]
        != make_data.build_novel_tasks()["novel_word_swap"]["pairs"]
    )


def test_shipped_files_are_what_make_data_builds():
    built = make_data.build_tasks()
    assert set(built) == set(task_names())
    for name, task in built.items():
        assert json.loads((DATA_DIR / f"{name}.json").read_text("utf-8")) == task, name


def test_rule_based_tasks_follow_their_rule():
    tag_words = {tag: set(text.split()) for tag, text in make_data.POS_WORDS.items()}
    for tag in make_data.POS_TAGS:
        for x, y in load_task(f"pos_first_{tag}").pairs:
            words = x.split()
            assert len(words) == 7
            assert {t for t, ws in tag_words.items() if set(words) & ws} == set(tag_words)
            assert y == next(w for w in words if w in tag_words[tag])
    ops = {"and": "&", "or": "|", "xor": "^"}
    for op, sym in ops.items():
        for x, y in load_task(f"bitwise_{op}").pairs:
            a, b = x.split()
            want = format(eval(f"{int(a, 2)} {sym} {int(b, 2)}"), "05b")
            assert y == want
    for op, base in (("nand", "and"), ("nor", "or"), ("xnor", "xor")):
        neg = dict(load_task(f"bitwise_{op}").pairs)
        for x, y in load_task(f"bitwise_{base}").pairs:
            assert neg[x] == "".join("1" if c == "0" else "0" for c in y)
    for x, y in load_task("uppercase").pairs:
        assert y == x.upper()
    for x, y in load_task("next_number").pairs:
        assert int(y) == int(x) + 1


def test_null_task_has_matching_formats_but_no_rule():
    null = load_task("null")
    pos_inputs = set(load_task("pos_first_noun").inputs)
    bit_inputs = set(load_task("bitwise_and").inputs)
    assert set(null.inputs) == pos_inputs | bit_inputs
    for x, y in null.pairs:
        if x in pos_inputs:
            assert y in x.split()
        else:
            assert len(y) == 5 and set(y) <= {"0", "1"}
    # no POS or bitwise rule explains the labels
    for t in load_tasks("pos,bitwise"):
        agree = sum(dict(t.pairs)[x] == y for x, y in null.pairs if x in dict(t.pairs))
        assert agree < 0.5 * len(t)


def test_task_groups_restrict_null_to_each_family():
    groups = task_groups(load_tasks("pos,bitwise,null,antonym"))
    assert set(groups) == {"pos", "bitwise"}  # the word family has one task only
    for members in groups.values():
        null = [t for t in members if t.family == "null"]
        assert len(null) == 1 and len(members) == 7
        assert set(null[0].inputs) == set(members[0].inputs)
    r = restrict_inputs(load_task("null"), {"nothing"})
    assert len(r) == 0


def test_load_tasks_selection_and_unknown_names():
    assert [t.name for t in load_tasks("bitwise")] == sorted(
        f"bitwise_{op}" for op in make_data.BITWISE_OPS
    )
    assert [t.name for t in load_tasks("antonym,antonym")] == ["antonym"]
    with pytest.raises(KeyError, match="unknown task 'antonymm'"):
        load_task("antonymm")


def _good() -> dict:
    return {
        "schema_version": 1,
        "name": "mytask",
        "family": "word",
        "description": "d",
        "pairs": [{"input": f"x{i}", "output": f"y{i}"} for i in range(12)],
    }


def _corrupt(fn):
    d = _good()
    fn(d)
    return d


@pytest.mark.parametrize(
    "data, message",
    [
        (_corrupt(lambda d: d.pop("pairs")), "missing key"),
        (_corrupt(lambda d: d.update(schema_version=2)), "schema_version"),
        (_corrupt(lambda d: d.update(family="poetry")), "family 'poetry'"),
        (_corrupt(lambda d: d.update(name="other")), "differs from the file name"),
        (_corrupt(lambda d: d.update(description=" ")), "non-empty string"),
        (_corrupt(lambda d: d.update(pairs=d["pairs"][:3])), "at least 10"),
        (_corrupt(lambda d: d["pairs"][4].update(output="")), "entry 4.*empty"),
        (_corrupt(lambda d: d["pairs"][2].update(input=" x2")), "whitespace"),
        (_corrupt(lambda d: d["pairs"][3].update(input="x1")), "duplicate input 'x1'.*entry 1"),
        (_corrupt(lambda d: d["pairs"][5].update(output=5)), "must be a string"),
        (_corrupt(lambda d: d["pairs"][6].update(extra="z")), "exactly 'input' and 'output'"),
        ([1, 2], "JSON object"),
    ],
)
def test_corrupt_task_files_fail_clearly(tmp_path, data, message):
    path = tmp_path / "mytask.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TaskDataError, match=message) as err:
        load_task_file(path)
    assert str(path) in str(err.value)


def test_unreadable_task_files(tmp_path):
    bad = tmp_path / "mytask.json"
    bad.write_text('{"schema_version": 1, "name": ', encoding="utf-8")
    with pytest.raises(TaskDataError, match="not valid UTF-8 JSON"):
        load_task_file(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TaskDataError, match="not valid UTF-8 JSON"):
        load_task_file(bad)
    with pytest.raises(FileNotFoundError):
        load_task_file(tmp_path / "missing.json")
    good = tmp_path / "mytask.json"
    good.write_text(json.dumps(_good()), encoding="utf-8")
    assert len(load_task(str(good))) == 12
    assert [t.name for t in load_tasks("mytask", directory=tmp_path)] == ["mytask"]
