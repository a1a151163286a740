"""perft_peft.data: LLM-Adapters templates (byte for byte), tokenisation rules, collator, loading, fixtures."""

import json
import re

import pytest
import torch

from perft_peft.data import (
    RecordError,
    available_fixtures,
    ensure_pad_token,
    extract_response,
    fixture_path,
    generate_eval_prompt,
    generate_prompt,
    load_llm_adapters_dataset,
    make_collator,
    tiny_word_tokenizer,
    tokenize_dataset,
    tokenize_example,
)

WITH_INPUT = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "answer": "5"}
NO_INPUT = {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"}

# Expected strings written out by hand from LLM-Adapters' finetune.py / commonsense_evaluate.py / evaluate.py.
TRAIN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request. \n\n                ### Instruction:\n                Add the"
    " numbers.\n                \n                ### Input:\n                2 and 3\n                \n         "
    "       ### Response:\n                5"
)
TRAIN_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n                ### Instruction:\n                Is the sky blue?\n                \n                ### "
    "Response:\n                the correct answer is true"
)
EVAL_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n                ### Instruction:\n                Add the"
    " numbers.\n\n                ### Input:\n                2 and 3\n\n                ### Response:\n         "
    "       "
)
EVAL_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
    "\n                ### Instruction:\n                Is the sky blue?\n\n                ### Response:\n     "
    "           "
)


@pytest.fixture(scope="module")
def tok():
    return tiny_word_tokenizer([generate_prompt(WITH_INPUT), generate_prompt(NO_INPUT), "o1 o2 o3 w1 w2 w3 w4"])


def words(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(text.split())


# --- templates ---------------------------------------------------------------------------------------------------


def test_training_template_is_llm_adapters_byte_for_byte():
    assert generate_prompt(WITH_INPUT) == TRAIN_WITH_INPUT
    assert generate_prompt(NO_INPUT) == TRAIN_NO_INPUT
    assert generate_prompt(WITH_INPUT, with_output=False) == TRAIN_WITH_INPUT[: -len("5")]
    assert generate_prompt(NO_INPUT, with_output=False) == TRAIN_NO_INPUT[: -len("the correct answer is true")]


def test_eval_template_is_llm_adapters_byte_for_byte():
    assert generate_eval_prompt(WITH_INPUT["instruction"], WITH_INPUT["input"]) == EVAL_WITH_INPUT
    assert generate_eval_prompt(NO_INPUT["instruction"]) == EVAL_NO_INPUT
    assert generate_eval_prompt(NO_INPUT["instruction"], "") == EVAL_NO_INPUT
    # Not the training prompt with an empty response: LLM-Adapters' two copies differ in whitespace.
    assert generate_eval_prompt(NO_INPUT["instruction"]) != generate_prompt(NO_INPUT, with_output=False)


def test_extract_response():
    assert extract_response(EVAL_NO_INPUT + " the correct answer is true \n") == "the correct answer is true"
    assert extract_response("x ### Response: a ### Response: b") == "a"
    with pytest.raises(ValueError, match="Response"):
        extract_response("no marker here")


# --- tokenisation ------------------------------------------------------------------------------------------------


def test_labels_mask_exactly_the_prompt_tokens(tok):
    record = {"instruction": "w1 w2", "input": "w3", "output": "o1 o2 o3"}
    full = tokenize_example(record, tok, train_on_inputs=True)
    assert full["labels"] == full["input_ids"]
    assert full["input_ids"][0] == tok.bos_token_id and full["input_ids"][-1] == tok.eos_token_id
    assert tok.unk_token_id not in full["input_ids"]

    masked = tokenize_example(record, tok, train_on_inputs=False)
    assert masked["input_ids"] == full["input_ids"]
    n_prompt = len(tok(generate_prompt(record, with_output=False))["input_ids"])
    assert n_prompt == len(full["input_ids"]) - 4  # the output's 3 words and EOS follow the prompt
    assert masked["labels"] == [-100] * n_prompt + words(tok, "o1 o2 o3 </s>")


@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT])
def test_masking_follows_the_template_variant(tok, record):
    out = tokenize_example(record, tok, train_on_inputs=False)
    assert [label for label in out["labels"] if label != -100] == words(tok, record["output"] + " </s>")
    assert len(out["labels"]) == len(out["input_ids"]) == len(out["attention_mask"])


def test_truncation_and_eos_rules(tok):
    record = {"instruction": "w1", "input": "", "output": "o1 o2 o3"}
    plain = tok(generate_prompt(record))["input_ids"]  # no EOS yet
    n = len(plain)

    cut = tokenize_example(record, tok, cutoff_len=n - 2)  # truncated: no EOS, ends mid-output
    assert cut["input_ids"] == plain[: n - 2] and cut["labels"] == cut["input_ids"]
    assert cut["attention_mask"] == [1] * (n - 2)

    exact = tokenize_example(record, tok, cutoff_len=n)  # fits exactly: no room for EOS, none added
    assert exact["input_ids"] == plain

    room = tokenize_example(record, tok, cutoff_len=n + 1)  # one slot left: EOS appended
    assert room["input_ids"] == plain + [tok.eos_token_id] and room["attention_mask"] == [1] * (n + 1)

    no_eos = tokenize_example(record, tok, add_eos_token=False)
    assert no_eos["input_ids"] == plain

    already = tokenize_example({**record, "output": "o1 </s>"}, tok)  # already ends in EOS: not doubled
    assert already["input_ids"][-2:] == words(tok, "o1 </s>")
    assert already["input_ids"].count(tok.eos_token_id) == 1

    prompt_only = tokenize_example(record, tok, cutoff_len=5, train_on_inputs=False)  # cut inside the prompt
    assert prompt_only["labels"] == [-100] * 5 and len(prompt_only["input_ids"]) == 5


# --- collator ----------------------------------------------------------------------------------------------------


def _features(tok):
    short = tokenize_example({"instruction": "w1", "input": "", "output": "o1"}, tok, train_on_inputs=False)
    long = tokenize_example(
        {"instruction": "w1 w2 w3 w4", "input": "w1", "output": "o1 o2 o3"}, tok, train_on_inputs=False
    )
    return short, long


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_labels_with_minus_100_on_the_tokenizer_side(side):
    tok = tiny_word_tokenizer([generate_prompt(WITH_INPUT), "o1 o2 o3 w1 w2 w3 w4"], padding_side=side)
    short, long = _features(tok)
    batch = make_collator(tok)([short, long])
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= len(long["input_ids"])
    assert batch["labels"].dtype == torch.int64
    for row, feature in enumerate((short, long)):
        n, pad = len(feature["input_ids"]), width - len(feature["input_ids"])
        text = slice(0, n) if side == "right" else slice(pad, width)
        padding = slice(n, width) if side == "right" else slice(0, pad)
        assert batch["input_ids"][row, text].tolist() == feature["input_ids"]
        assert batch["labels"][row, text].tolist() == feature["labels"]
        assert batch["attention_mask"][row, text].tolist() == [1] * n
        assert batch["input_ids"][row, padding].tolist() == [tok.pad_token_id] * pad
        assert batch["labels"][row, padding].tolist() == [-100] * pad
        assert batch["attention_mask"][row, padding].tolist() == [0] * pad


def test_collator_needs_a_pad_token():
    tok = tiny_word_tokenizer(["w1"])
    tok.pad_token = None
    with pytest.raises(ValueError, match="ensure_pad_token"):
        make_collator(tok)
    assert ensure_pad_token(tok).pad_token == "<unk>"
    make_collator(tok)


def test_tiny_word_tokenizer_over_a_given_vocabulary():
    """The demo's and tiny_tokenizer's case: the ids are the vocabulary's order, an unknown word is an error
    (there is no <unk> to hide it), and a vocabulary without the special tokens first is refused."""
    tok = tiny_word_tokenizer(vocabulary=["<pad>", "<s>", "</s>", "b", "a", "?"])
    assert tok("b a ?")["input_ids"] == [1, 3, 4, 5]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token) == (0, 1, 2, None)
    assert tok.decode([3, 4, 5, 2], skip_special_tokens=True) == "b a ?"
    with pytest.raises(Exception, match="UNK"):
        tok("b c")
    with pytest.raises(ValueError, match="starts with <pad> <s> </s>"):
        tiny_word_tokenizer(vocabulary=["a", "<pad>", "<s>", "</s>"])
    with pytest.raises(ValueError, match="repeats no token"):
        tiny_word_tokenizer(vocabulary=["<pad>", "<s>", "</s>", "a", "a"])
    with pytest.raises(ValueError, match="not both"):
        tiny_word_tokenizer(["a"], vocabulary=["<pad>", "<s>", "</s>", "a"])


# --- loading -----------------------------------------------------------------------------------------------------


def _write(path, records, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records))
    return path


def test_load_local_json_jsonl_and_directory(tmp_path):
    cache = str(tmp_path / "cache")
    records = [WITH_INPUT, NO_INPUT]
    ds = load_llm_adapters_dataset(_write(tmp_path / "train.json", records), cache_dir=cache)
    assert len(ds) == 2 and ds[0] == WITH_INPUT and set(ds.column_names) == {"instruction", "input", "output", "answer"}
    ds = load_llm_adapters_dataset(
        str(_write(tmp_path / "data.jsonl", records, jsonl=True)), split="test", cache_dir=cache
    )
    assert ds[1] == NO_INPUT and ds.split == "test"
    task = tmp_path / "boolq"  # LLM-Adapters' dataset/<name>/test.json layout
    task.mkdir()
    _write(task / "test.json", [NO_INPUT])
    _write(task / "train.json", records)
    assert len(load_llm_adapters_dataset(task, split="test", require_answer=True, cache_dir=cache)) == 1
    assert len(load_llm_adapters_dataset(task, split="train", cache_dir=cache)) == 2


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "commonsense_170k.json"
    with pytest.raises(FileNotFoundError, match="commonsense_170k.json"):
        load_llm_adapters_dataset(missing)
    with pytest.raises(FileNotFoundError, match="math_50k.json"):
        load_llm_adapters_dataset("math_50k.json")
    with pytest.raises(FileNotFoundError, match="validation.json"):
        load_llm_adapters_dataset(tmp_path, split="validation")  # empty directory


def test_unreachable_hub_id_is_a_file_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="not a local file or directory"):
        load_llm_adapters_dataset("someone/not-a-real-dataset")


def test_records_without_required_fields_name_the_field_and_record(tmp_path):
    cache = str(tmp_path / "cache")
    bad = [WITH_INPUT, NO_INPUT, {"instruction": "Q", "input": ""}]
    with pytest.raises(RecordError, match=r"record 2 has no 'output' field"):
        load_llm_adapters_dataset(_write(tmp_path / "a.json", bad), cache_dir=cache)
    no_input = [{"instruction": "Q", "output": "A"}] * 3
    with pytest.raises(RecordError, match=r"record 0 has no 'input' field.*no record has it"):
        load_llm_adapters_dataset(_write(tmp_path / "b.json", no_input), cache_dir=cache)
    no_answer = [WITH_INPUT, {k: v for k, v in NO_INPUT.items() if k != "answer"}]
    assert len(load_llm_adapters_dataset(_write(tmp_path / "c.json", no_answer), cache_dir=cache)) == 2
    with pytest.raises(RecordError, match=r"record 1 has no 'answer' field"):
        load_llm_adapters_dataset(tmp_path / "c.json", require_answer=True, cache_dir=cache)
    with pytest.raises(RecordError, match="'output' must be text"):
        load_llm_adapters_dataset(_write(tmp_path / "d.json", [{**NO_INPUT, "output": 3}]), cache_dir=cache)


# --- fixtures ----------------------------------------------------------------------------------------------------

EVAL_ANSWERS = {
    "boolq": r"true|false",
    "piqa": r"solution[12]",
    "social_i_qa": r"answer[123]",
    "hellaswag": r"ending[1-4]",
    "winogrande": r"option[12]",
    "gsm8k": r"\d+\.0",
}


def test_fixtures_load_and_follow_llm_adapters_formats(tmp_path):
    assert set(available_fixtures()) == {"commonsense_tiny", "math_tiny", *(f"eval/{t}" for t in EVAL_ANSWERS)}
    assert fixture_path("boolq") == fixture_path("eval/boolq.json")
    with pytest.raises(FileNotFoundError, match="commonsense_tiny"):
        fixture_path("commonsense_170k")
    tok = tiny_word_tokenizer()
    for name in available_fixtures():
        records = load_llm_adapters_dataset(fixture_path(name), require_answer=True, cache_dir=str(tmp_path))
        assert (32 <= len(records) <= 64) if not name.startswith("eval/") else len(records) == 10
        for record in records:
            assert record["instruction"] and record["input"] == ""
            if name == "math_tiny" or name == "eval/gsm8k":
                last_number = re.findall(r"-?\d+\.?\d*", record["output"])[-1].rstrip(".")
                assert float(last_number) == float(record["answer"])
            else:
                assert record["output"] == f"the correct answer is {record['answer']}"
                assert re.fullmatch(r"true|false|solution\d|answer\d|ending\d|option\d", record["answer"])
            if name.startswith("eval/"):
                assert re.fullmatch(EVAL_ANSWERS[name[5:]], record["answer"])
            ids = tokenize_example(record, tok)["input_ids"]
            assert tok.unk_token_id not in ids and len(ids) <= 128  # fits a tiny model's 128 positions


def test_tokenized_fixture_trains_a_tiny_moe(tmp_path):
    from perft_peft.testing import tiny_moe

    tok = tiny_word_tokenizer()
    raw = load_llm_adapters_dataset(fixture_path("commonsense_tiny"), cache_dir=str(tmp_path)).select(range(6))
    data = tokenize_dataset(raw, tok, cutoff_len=128, train_on_inputs=False)
    assert data.column_names == ["input_ids", "attention_mask", "labels"] and len(data) == 6
    batch = make_collator(tok)([data[i] for i in range(4)])
    model = tiny_moe("mixtral", vocab_size=len(tok))
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0
