"""The LoRACoE paper's data mixture (perft_peft.data.mixture): seeded samples of the given sizes, OrcaMath mapped to
the LLM-Adapters format, clear errors naming the bad source before anything is trained."""

import json
import runpy
from pathlib import Path

import pytest

from perft_peft.data import (
    ORCA_MATH_FIXTURE,
    TRAIN_TEMPLATE_NO_INPUT,
    MixturePart,
    RecordError,
    fixture_path,
    generate_prompt,
    load_mixture,
    loracoe_mixture,
)
from perft_peft.recipe import mixture_parts

COMMONSENSE = fixture_path("commonsense_tiny")
ORCA = [json.loads(line) for line in ORCA_MATH_FIXTURE.read_text().splitlines()]
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "loracoe.py"


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def key(record):
    return record["instruction"], record["output"]


def test_sizes_sources_and_seed(cache):
    mixture = loracoe_mixture(COMMONSENSE, ORCA_MATH_FIXTURE, commonsense_size=10, math_size=8, seed=3, cache_dir=cache)
    assert mixture.column_names == ["instruction", "input", "output"] and len(mixture) == 18
    orca = {(r["question"], r["answer"]) for r in ORCA}
    commonsense = {key(r) for r in json.loads(COMMONSENSE.read_text())}
    keys = [key(r) for r in mixture]
    assert sum(k in orca for k in keys) == 8 and sum(k in commonsense for k in keys) == 10
    assert len(set(keys)) == 18 and all(r["input"] == "" for r in mixture)
    # Shuffled together: the math records are not all at the end.
    assert any(k in orca for k in keys[:9])
    again = loracoe_mixture(COMMONSENSE, ORCA_MATH_FIXTURE, 10, 8, seed=3, cache_dir=cache)
    assert [key(r) for r in again] == keys
    other = loracoe_mixture(COMMONSENSE, ORCA_MATH_FIXTURE, 10, 8, seed=4, cache_dir=cache)
    assert {key(r) for r in other} != set(keys)


def test_orca_math_records_use_the_llm_adapters_template(cache):
    mixture = load_mixture([MixturePart(ORCA_MATH_FIXTURE, format="orca_math")], cache_dir=cache)
    assert len(mixture) == len(ORCA)
    record = next(r for r in mixture if r["instruction"] == ORCA[0]["question"])
    expected = TRAIN_TEMPLATE_NO_INPUT.format(instruction=ORCA[0]["question"], output=ORCA[0]["answer"])
    assert generate_prompt(record) == expected


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_missing_column_names_the_source(tmp_path, cache):
    bad = write_jsonl(tmp_path / "orca_bad.jsonl", [{"question": "1 + 1?", "solution": "2"}])
    with pytest.raises(RecordError, match=r"orca_bad\.jsonl.*'answer'"):
        loracoe_mixture(COMMONSENSE, bad, 4, 1, cache_dir=cache)
    bad = tmp_path / "commonsense_bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "input": ""}]))
    with pytest.raises(RecordError, match=r"commonsense_bad\.json.*'output'"):
        loracoe_mixture(bad, ORCA_MATH_FIXTURE, 1, 4, cache_dir=cache)


@pytest.mark.parametrize("part", ["commonsense", "math"])
def test_empty_source_names_it(part, tmp_path, cache):
    empty = tmp_path / f"empty_{part}.json"
    empty.write_text("[]")
    sources = (empty, ORCA_MATH_FIXTURE) if part == "commonsense" else (COMMONSENSE, empty)
    with pytest.raises((RecordError, ValueError), match=f"empty_{part}"):
        loracoe_mixture(*sources, None, None, cache_dir=cache)


def test_bad_sizes(cache):
    with pytest.raises(ValueError, match=r"orca_math_tiny\.jsonl: asked for 25 records, but it has only 24"):
        loracoe_mixture(COMMONSENSE, ORCA_MATH_FIXTURE, 4, 25, cache_dir=cache)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        MixturePart(COMMONSENSE, 0)
    with pytest.raises(ValueError, match="format must be one of"):
        MixturePart(COMMONSENSE, format="alpaca")


def test_recipe_uses_the_mixture_with_the_papers_sizes(tmp_path):
    parser = runpy.run_path(str(RECIPE), run_name="help")["p"]

    def parts(argv):
        script, method, _ = parser.parse(argv)
        return mixture_parts(script, method)

    assert parts(["--model", "m", "--output_dir", str(tmp_path)]) == [
        MixturePart("commonsense_170k.json", 75_000),
        MixturePart("microsoft/orca-math-word-problems-200k", 75_000, "orca_math"),
    ]
    assert parts(["--tiny", "--output_dir", str(tmp_path)]) == [
        MixturePart(COMMONSENSE),
        MixturePart(ORCA_MATH_FIXTURE, format="orca_math"),
    ]
    argv = ["--model", "m", "--output_dir", str(tmp_path), "--math_data", "none", "--data_size", "0"]
    assert parts(argv) == [MixturePart("commonsense_170k.json")]
