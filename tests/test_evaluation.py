"""perft_peft.evaluation: LLM-Adapters answer extraction and scoring, the offline metric module, batched generation,
the report, recipes/evaluate_adapter.py's flags, and a tiny train-then-evaluate run end to end."""

import json
import runpy
from pathlib import Path
from statistics import fmean

import pytest
from peft import get_peft_model

from perft_peft import PerftConfig
from perft_peft.data import fixture_path, tiny_word_tokenizer
from perft_peft.evaluation import (
    BENCHMARKS,
    METRIC_PATH,
    BenchmarkResult,
    EvalReport,
    cli,
    evaluate_benchmarks,
    evaluation_generation_config,
    fixture_benchmarks,
    generate_responses,
    get_benchmark,
    is_correct,
    last_number,
    load_accuracy_metric,
    score_benchmark,
)
from perft_peft.testing import tiny_moe

from .scripts import RECIPES, TINY_RUN, run

# (benchmark, model response, what LLM-Adapters' extract_answer returns). The expected values were obtained by
# running commonsense_evaluate.py's extract_answer on these strings, and are written out here.
LABEL_CASES = [
    ("boolq", "the correct answer is true", "true"),
    ("boolq", "the correct answer is false, not true", "false"),  # the first one wins
    ("boolq", "true/false", "true"),  # echoing the answer format counts as its first label
    ("boolq", "That is untrue.", "true"),  # inside a word
    ("boolq", "The correct answer is True", ""),  # case-sensitive
    ("boolq", "the correct answer is yes", ""),
    ("boolq", "", ""),
    ("piqa", "the correct answer is solution2", "solution2"),
    ("piqa", "the correct answer is solution1 or solution2", "solution1"),  # ambiguous: credited to the first
    ("piqa", "the correct answer is Solution2", ""),
    ("piqa", "the correct answer is solution 1", ""),
    ("piqa", "solution3", ""),
    ("piqa", "solution12", "solution1"),
    ("social_i_qa", "the correct answer is answer3", "answer3"),
    ("social_i_qa", "the correct answer is answer4 or answer1", "answer4"),  # answer1-5 pattern, even for SIQA
    ("social_i_qa", "answer5", "answer5"),
    ("social_i_qa", "Answer2", ""),
    ("social_i_qa", "the correct answer is answer", ""),
    ("hellaswag", "the correct answer is ending4", "ending4"),
    ("hellaswag", "the correct answer is ending5 ending2", "ending2"),  # ending5 is no label
    ("hellaswag", "Ending1", ""),
    ("winogrande", "the correct answer is option2", "option2"),
    ("winogrande", "option1/option2", "option1"),
    ("winogrande", "the correct answer is option3", ""),
    ("winogrande", "Option1", ""),
    ("ARC-Easy", "the correct answer is answer4", "answer4"),
    ("ARC-Easy", "answer1answer2", "answer1"),
    ("ARC-Challenge", "the correct answer is answer5", "answer5"),
    ("ARC-Challenge", "answer10", "answer1"),
    ("openbookqa", "the correct answer is answer2.", "answer2"),
    ("openbookqa", "no idea", ""),
    # AQuA (evaluate.py, extract_answer_letter): the first capital A-E anywhere, words included.
    ("AQuA", "Rationale: 3 * 4 = 12. The answer is (B).", "B"),
    ("AQuA", "The answer is (C).", "C"),
    ("AQuA", "the answer is c", ""),
    ("AQuA", "option c", ""),
    ("AQuA", "A: The answer is C", "A"),
    ("AQuA", "Each box costs 5. The answer is (D)", "E"),
    ("AQuA", "The answer is (E) or (A)", "E"),
    ("AQuA", "no letters here", ""),
]

# (response, evaluate.py's extract_answer_number, ours): the same but None where theirs is inf.
NUMBER_CASES = [
    ("\nA: There were 15 birds and 3 more came, so 15 + 3 = 18. The answer is 18.", 18.0, 18.0),
    ("She pays $5 for each, so 3 * $5 = $15. The answer is 15.", 15.0, 15.0),
    ("The total is 1,234 dollars.", 1234.0, 1234.0),
    ("3,4", 34.0, 34.0),  # commas go first, even between numbers
    ("It drops to -3 degrees.", -3.0, -3.0),
    ("Half of 5 is 2.5, so 2.5", 2.5, 2.5),
    ("The answer is .5", 5.0, 5.0),
    ("5-3=2", 2.0, 2.0),
    ("from 2023-01-02", -2.0, -2.0),
    ("The answer is 18.</s>", 18.0, 18.0),
    ("1/2", 2.0, 2.0),
    ("He has 50% of 40 = 20.0 apples", 20.0, 20.0),
    ("1.2.3", 3.0, 3.0),
    ("1e5", 5.0, 5.0),
    ("The answer is 7 apples. 8", 8.0, 8.0),
    ("no number here", float("inf"), None),
    ("", float("inf"), None),
    ("9" * 400, float("inf"), None),  # overflows a float
]


@pytest.mark.parametrize("name, response, expected", LABEL_CASES)
def test_label_extraction_matches_llm_adapters(name, response, expected):
    assert get_benchmark(name).extract(response) == expected


@pytest.mark.parametrize("response, theirs, ours", NUMBER_CASES)
def test_number_extraction_matches_llm_adapters(response, theirs, ours):
    assert last_number(response) == ours
    assert ours == (theirs if theirs != float("inf") else None)
    for name in ("MultiArith", "gsm8k", "AddSub", "SingleEq", "SVAMP"):
        assert get_benchmark(name).extract(response) == ours


def test_label_scoring_is_exact_match():
    assert is_correct("solution1", "solution1", numeric=False)
    assert not is_correct("solution2", "solution1", numeric=False)
    assert not is_correct("", "true", numeric=False)  # nothing extracted
    assert not is_correct("c", "C", numeric=False)


@pytest.mark.parametrize(
    "prediction, reference, correct",
    [
        (18.0, "18.0", True),
        (18.0009, "18.0", True),  # |diff| <= 0.001, as evaluate.py's miss = 0.001
        (18.0011, "18.0", False),
        (18.001, "18.0", False),  # in floats |18.001 - 18| = 0.0010000000000012 > 0.001: False in LLM-Adapters too
        (0.667, "0.6666666666666666", True),  # AddSub stores thirds to 16 digits
        (0.67, "0.6666666666666666", False),
        (-10.0, "-10.0", True),
        (10.0, "-10.0", False),
        (4.0, "4", True),  # AddSub answers have no ".0"
        (None, "18.0", False),  # no number
    ],
)
def test_number_tolerance(prediction, reference, correct):
    assert is_correct(prediction, reference, numeric=True) is correct


def test_benchmarks_follow_llm_adapters():
    assert list(BENCHMARKS) == [
        "boolq",
        "piqa",
        "social_i_qa",
        "hellaswag",
        "winogrande",
        "ARC-Easy",
        "ARC-Challenge",
        "openbookqa",
        "MultiArith",
        "gsm8k",
        "AddSub",
        "AQuA",
        "SingleEq",
        "SVAMP",
    ]
    domains = {b.name: b.domain for b in BENCHMARKS.values()}
    assert [n for n, d in domains.items() if d == "commonsense"] == list(BENCHMARKS)[:8]
    # commonsense_evaluate.py: 4 beams, 32 new tokens; evaluate.py: 4 beams, 256 new tokens.
    assert {(b.domain, b.num_beams, b.max_new_tokens) for b in BENCHMARKS.values()} == {
        ("commonsense", 4, 32),
        ("arithmetic", 4, 256),
    }
    assert [b.name for b in BENCHMARKS.values() if b.numeric] == ["MultiArith", "gsm8k", "AddSub", "SingleEq", "SVAMP"]
    answer_tasks = {"social_i_qa", "ARC-Easy", "ARC-Challenge", "openbookqa"}
    assert {b.name for b in BENCHMARKS.values() if b.extract == get_benchmark("obqa").extract} == answer_tasks
    assert get_benchmark("SIQA").name == "social_i_qa" and get_benchmark("arc-e").name == "ARC-Easy"
    assert get_benchmark("HellaSwag").name == "hellaswag" and get_benchmark("GSM8K").name == "gsm8k"
    assert BENCHMARKS["gsm8k"].data_path("dataset") == Path("dataset/gsm8k/test.json")
    with pytest.raises(ValueError, match="Unknown benchmark 'mmlu'"):
        get_benchmark("mmlu")


def test_metric_module_loads_by_path_offline(monkeypatch):
    """Loaded by path with every socket refused (recipes/evaluate_adapter.py loads it too, in the end-to-end run with
    HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1)."""
    import socket

    import evaluate

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    labels = evaluate.load(str(METRIC_PATH))
    numbers = evaluate.load(str(METRIC_PATH), config_name="number")
    assert labels.compute(predictions=["true", "", "answer2", "C"], references=["true", "false", "answer3", "C"]) == {
        "accuracy": 0.5,
        "correct": 2,
        "total": 4,
    }
    assert numbers.compute(predictions=[None, 18.0005, 3.0, -2.0], references=["18.0", "18.0", "3", "2.0"]) == {
        "accuracy": 0.5,
        "correct": 2,
        "total": 4,
    }
    with pytest.raises(ValueError, match="config_name must be one of"):
        evaluate.load(str(METRIC_PATH), config_name="fuzzy")


def test_metric_agrees_with_the_scoring_rule():
    numbers = load_accuracy_metric(numeric=True)
    assert numbers.compute(predictions=[0.667, 0.67], references=["0.6666666666666666"] * 2)["correct"] == 1
    assert numbers.compute(predictions=[1.0, 1.0], references=[1.5, 1.5], tolerance=0.5)["accuracy"] == 1.0
    labels = load_accuracy_metric(numeric=False)
    assert labels.compute(predictions=["", "ending1"], references=["ending1", "ending1"])["accuracy"] == 0.5


def _result(name, correct, total=8):
    return BenchmarkResult(name, correct, total, num_beams=4, max_new_tokens=BENCHMARKS[name].max_new_tokens)


def test_report_averages_markdown_and_json(tmp_path):
    commonsense = {
        "boolq": 6,
        "piqa": 5,
        "social_i_qa": 4,
        "hellaswag": 3,
        "winogrande": 2,
        "ARC-Easy": 8,
        "ARC-Challenge": 1,
        "openbookqa": 7,
    }
    results = {**{n: _result(n, c) for n, c in commonsense.items()}, "gsm8k": _result("gsm8k", 1, total=4)}
    report = EvalReport(dict(reversed(results.items())), model_name="olmoe-perft-r", settings={"limit": None})
    assert list(report.results) == [*commonsense, "gsm8k"]  # the papers' order, whatever the input order
    assert report.averages() == {"CR": pytest.approx(100 * 36 / 64), "AR": 25.0}

    markdown = report.to_markdown()
    lines = markdown.splitlines()
    assert "| Model | BoolQ | PIQA | SIQA | HellaS | WinoG | ARC-e | ARC-c | OBQA | Avg. |" in lines
    assert "| olmoe-perft-r | 75.0 | 62.5 | 50.0 | 37.5 | 25.0 | 100.0 | 12.5 | 87.5 | 56.2 |" in lines
    assert "| Model | MultiArith | GSM8K | AddSub | AQuA | SingleEq | SVAMP | Avg. |" in lines
    assert "| olmoe-perft-r | – | 25.0 | – | – | – | – | 25.0 |" in lines
    assert "Avg. over the 1 of 6 benchmarks evaluated" in markdown  # partial AR flagged ...
    assert "of 8 benchmarks" not in markdown  # ... complete CR not
    for start in (i for i, line in enumerate(lines) if line.startswith("| Model")):
        header, separator, row = lines[start : start + 3]
        assert header.count("|") == separator.count("|") == row.count("|")

    report.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["averages"] == report.averages()
    assert data["benchmarks"]["gsm8k"] == {
        "label": "GSM8K",
        "domain": "arithmetic",
        "accuracy": 25.0,
        "correct": 1,
        "total": 4,
        "num_beams": 4,
        "max_new_tokens": 256,
    }
    assert EvalReport.from_json(tmp_path / "r.json").to_markdown() == markdown

    only_ar = EvalReport({"AQuA": _result("AQuA", 2)})
    assert only_ar.averages() == {"AR": 25.0} and "Commonsense" not in only_ar.to_markdown()


@pytest.fixture(scope="module")
def tiny():
    """A tiny Mixtral with a PERFT-R adapter whose weights are random (so the adapter changes the outputs) and
    dropout 0.5 (so generating in training mode would not be deterministic)."""
    tokenizer = tiny_word_tokenizer()
    base = tiny_moe("mixtral", vocab_size=len(tokenizer), max_position_embeddings=256)
    model = get_peft_model(base, PerftConfig(variant="R", num_experts=4, top_k=2, init_weights=False, lora_dropout=0.5))
    return model, tokenizer


INSTRUCTIONS = [
    json.loads(fixture_path(n).read_text())[i]["instruction"] for n, i in (("boolq", 0), ("hellaswag", 1), ("gsm8k", 2))
]  # three different prompt lengths


def test_batched_left_padded_generation_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    model.train()  # generation must switch dropout off, and give the mode back
    batched = generate_responses(
        model, tokenizer, INSTRUCTIONS, num_beams=1, max_new_tokens=6, batch_size=3, progress=False
    )
    assert model.training
    single = [
        generate_responses(model, tokenizer, [i], num_beams=1, max_new_tokens=6, progress=False)[0]
        for i in INSTRUCTIONS
    ]
    assert batched == single and all(batched)
    with model.disable_adapter():  # the base model's answers differ: the adapter is really used
        assert (
            generate_responses(model, tokenizer, INSTRUCTIONS, num_beams=1, max_new_tokens=6, progress=False) != batched
        )
    plain = tiny_moe("mixtral", vocab_size=len(tokenizer), max_position_embeddings=256)  # not a PeftModel
    assert (
        len(generate_responses(plain, tokenizer, INSTRUCTIONS[:2], num_beams=2, max_new_tokens=3, progress=False)) == 2
    )


def test_generation_is_deterministic_whatever_the_checkpoint_config(tiny):
    model, tokenizer = tiny
    config = evaluation_generation_config(model, tokenizer, num_beams=4, max_new_tokens=32)
    assert (config.num_beams, config.max_new_tokens, config.do_sample) == (4, 32, False)
    assert (config.pad_token_id, config.eos_token_id) == (0, 2)
    reference = generate_responses(model, tokenizer, INSTRUCTIONS[:1], num_beams=1, max_new_tokens=24, progress=False)
    assert len(set(reference[0].split())) < 24  # it repeats itself, so a repetition penalty would show
    # transformers 5 fills unset generation settings from the checkpoint's generation config: these must not leak.
    leaks = dict(do_sample=True, temperature=5.0, repetition_penalty=100.0)
    saved = {key: getattr(model.generation_config, key) for key in leaks}
    model.generation_config.update(**leaks)
    try:
        runs = [
            generate_responses(model, tokenizer, INSTRUCTIONS[:1], num_beams=1, max_new_tokens=24, progress=False)
            for _ in range(2)
        ]
    finally:
        model.generation_config.update(**saved)
    assert runs[0] == runs[1] == reference


def test_generation_stops_at_eos_and_drops_padding(tiny):
    model, tokenizer = tiny
    free = generate_responses(
        model, tokenizer, INSTRUCTIONS, num_beams=1, max_new_tokens=6, batch_size=3, progress=False
    )
    last = free[-1].split()
    stop = next(w for w in last[1:] if all(w not in r.split() for r in free[:-1]))  # only the last row says it
    saved, model.generation_config.eos_token_id = (
        model.generation_config.eos_token_id,
        tokenizer.convert_tokens_to_ids(stop),
    )
    try:
        stopped = generate_responses(
            model, tokenizer, INSTRUCTIONS, num_beams=1, max_new_tokens=6, batch_size=3, progress=False
        )
    finally:
        model.generation_config.eos_token_id = saved
    # The last row ends at its EOS and is padded while the others go on; the padding is not part of its answer.
    assert stopped == [*free[:-1], " ".join(last[: last.index(stop) + 1])]
    assert stopped[-1] != free[-1]


def test_evaluate_benchmarks_scores_what_it_extracted(tiny):
    model, tokenizer = tiny
    records = json.loads(fixture_path("piqa").read_text())
    report = evaluate_benchmarks(
        model,
        tokenizer,
        {"PIQA": records, "gsm8k": fixture_path("gsm8k")},
        limit=3,
        batch_size=2,
        greedy=True,
        max_new_tokens=4,
        model_name="tiny",
        progress=False,
    )
    assert list(report.results) == ["piqa", "gsm8k"]
    for name, result in report.results.items():
        assert (result.total, result.num_beams, result.max_new_tokens) == (3, 1, 4)
        assert result.correct == sum(e["correct"] for e in result.examples)
        for example in result.examples:
            assert example["prediction"] == BENCHMARKS[name].extract(example["response"])
            assert example["correct"] == is_correct(
                example["prediction"], example["answer"], numeric=BENCHMARKS[name].numeric
            )
    assert report.settings == {"batch_size": 2, "limit": 3, "greedy": True, "protocol": "llm-adapters"}


def test_score_benchmark_is_the_loop_of_evaluate_benchmarks_on_records_in_memory(tiny):
    """The paper sweep scores its synthetic tasks with score_benchmark: the same result as evaluate_benchmarks
    for the same records and decoding, whatever the protocol."""
    model, tokenizer = tiny
    records = json.loads(fixture_path("piqa").read_text())[:3]
    for protocol in ("llm-adapters", "perft"):
        report = evaluate_benchmarks(
            model,
            tokenizer,
            {"piqa": records},
            batch_size=2,
            greedy=True,
            max_new_tokens=3,
            progress=False,
            protocol=protocol,
        )
        result = score_benchmark(
            model,
            tokenizer,
            get_benchmark("piqa"),
            records,
            num_beams=1,
            max_new_tokens=3,
            batch_size=2,
            progress=False,
            protocol=protocol,
        )
        assert result == report.results["piqa"] and len(result.examples) == 3
        assert result.correct == sum(e["correct"] for e in result.examples)


RECORD = {"instruction": "q", "input": "", "output": "the correct answer is answer1", "answer": "answer1"}


@pytest.mark.parametrize(
    "benchmarks, kwargs, error, message",
    [
        ({"mmlu": []}, {}, ValueError, "Unknown benchmark 'mmlu'"),
        ({"siqa": "/nonexistent/social_i_qa"}, {}, FileNotFoundError, "No such data file"),
        ({"gsm8k": [{**RECORD, "answer": "many"}]}, {}, ValueError, "not a number"),
        ({"boolq": [{k: v for k, v in RECORD.items() if k != "answer"}]}, {}, ValueError, "'answer'"),
        ({"siqa": [RECORD], "social_i_qa": [RECORD]}, {}, ValueError, "already in the benchmarks"),
        ({}, {}, ValueError, "No benchmarks"),
        ({"boolq": [RECORD]}, {"greedy": True, "num_beams": 4}, ValueError, "contradicts num_beams=4"),
        ({"boolq": [RECORD]}, {"batch_size": 0}, ValueError, "batch_size must be at least 1"),
    ],
)
def test_bad_input_fails_before_any_generation(benchmarks, kwargs, error, message):
    with pytest.raises(error, match=message):
        evaluate_benchmarks(None, None, benchmarks, **kwargs)  # no model: nothing may be generated


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tiny"], "give --adapter"),
        (["--base_model", "b", "--revision", "v1", "--tiny"], "there is no --adapter"),
        (["--adapter", "a"], "give one of --data_dir"),
        (["--adapter", "a", "--tiny", "--data_dir", "d"], "give one of --data_dir"),
        (["--adapter", "a", "--tiny", "--benchmarks", "AQuA"], "no bundled test set for AQuA"),
        (["--adapter", "a", "--tiny", "--benchmarks", "mmlu"], "Unknown benchmark"),
        (["--adapter", "a", "--tiny", "--greedy", "--num_beams", "4"], "contradicts"),
        (
            ["--adapter", "a", "--data_dir", "/nonexistent", "--benchmarks", "boolq", "gsm8k"],
            "missing test sets: /nonexistent/boolq/test.json, /nonexistent/gsm8k/test.json",
        ),
    ],
)
def test_flag_errors(argv, message, capsys):
    parser = runpy.run_path(str(RECIPES / "evaluate_adapter.py"), run_name="flags")["p"]
    with pytest.raises(SystemExit):
        cli.parse(parser, [*argv, "--output_dir", "out"])
    assert message in capsys.readouterr().err


def test_flags_find_the_test_sets(tmp_path):
    parser = cli.parser("")
    tiny = cli.parse(parser, ["--adapter", "a", "--tiny", "--output_dir", "o"])
    assert tiny.sources == fixture_benchmarks()
    assert list(tiny.sources) == ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "gsm8k"]
    for name in ("ARC-Easy", "AQuA"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.json").write_text(json.dumps([RECORD]))  # parse checks the records too
    real = cli.parse(
        parser, ["--base_model", "b", "--data_dir", str(tmp_path), "--benchmarks", "AQuA", "arc-e", "--output_dir", "o"]
    )
    assert real.sources == {"ARC-Easy": tmp_path / "ARC-Easy" / "test.json", "AQuA": tmp_path / "AQuA" / "test.json"}


@pytest.mark.slow
def test_tiny_train_then_evaluate(tmp_path):
    adapter, out = tmp_path / "run", tmp_path / "eval"
    run([RECIPES / "mixtral_perft_r.py", *TINY_RUN, "--max_steps", "1", "--output_dir", adapter])
    run([RECIPES / "evaluate_adapter.py", "--adapter", adapter, "--tiny", "--limit", "4", "--output_dir", out])

    results = json.loads((out / "eval_results.json").read_text())
    benchmarks = results["benchmarks"]
    assert set(benchmarks) == set(fixture_benchmarks())
    for name, result in benchmarks.items():
        assert 0 <= result["accuracy"] <= 100 and result["total"] == 4
        assert result["accuracy"] == pytest.approx(100 * result["correct"] / 4)
        assert (result["num_beams"], result["max_new_tokens"]) == (4, BENCHMARKS[name].max_new_tokens)
    commonsense = [r["accuracy"] for r in benchmarks.values() if r["domain"] == "commonsense"]
    assert results["averages"]["CR"] == pytest.approx(fmean(commonsense))
    assert results["averages"]["AR"] == pytest.approx(benchmarks["gsm8k"]["accuracy"])
    assert results["model"] == str(adapter) and results["settings"]["limit"] == 4

    markdown = (out / "eval_results.md").read_text()
    assert markdown == EvalReport.from_json(out / "eval_results.json").to_markdown()
    assert f"| {adapter} | {benchmarks['boolq']['accuracy']:.1f} |" in markdown
    predictions = json.loads((out / "eval_predictions.json").read_text())["benchmarks"]
    assert all(len(p["examples"]) == 4 for p in predictions.values())
