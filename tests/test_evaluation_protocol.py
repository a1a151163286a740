"""The PERFT authors' evaluation protocol (``protocol="perft"``, ``--protocol perft``) rule by rule: the prompt
suffix "the correct answer is" (commonsense only), at most 4 new tokens (commonsense only), the answer read after
the *last* "### Response:" (every benchmark); ``llm-adapters`` unchanged and still the default."""

import json

import pytest
import torch
from peft import get_peft_model

from perft_peft import PerftConfig
from perft_peft.data import fixture_path, tiny_word_tokenizer
from perft_peft.evaluation import PROTOCOLS, cli, evaluate_benchmarks, get_protocol
from perft_peft.testing import tiny_moe

# commonsense/commonsense_evaluate.py, generate_prompt (no input), written out byte for byte: one space after
# "request.", empty lines, 16-space indentation, and the answer's start after the response marker.
PERFT_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request. \n\n                ### Instruction:\n                {instruction}\n\n"
    "                ### Response:\n                the correct answer is"
)
LLM_ADAPTERS_PROMPT = PERFT_PROMPT.removesuffix("the correct answer is")


class ScriptedModel:
    """Stands in for a causal LM: ``generate`` appends ``script``'s words, cut at ``max_new_tokens``, and records
    the prompts and the generation lengths it was asked for."""

    def __init__(self, tokenizer, script):
        from transformers import GenerationConfig

        self.tokenizer, self.script = tokenizer, script.split()
        self.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
        self.training, self.device = False, torch.device("cpu")
        self.prompts, self.lengths = [], []

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def generate(self, input_ids, attention_mask, generation_config):
        self.prompts += self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        self.lengths.append(generation_config.max_new_tokens)
        new = self.tokenizer.convert_tokens_to_ids(self.script[: generation_config.max_new_tokens])
        return torch.cat([input_ids, torch.tensor([new] * input_ids.shape[0])], dim=1)


SCRIPT = "answer1 ### Response: answer2 answer3 answer4"


def _tokenizer():
    return tiny_word_tokenizer([PERFT_PROMPT.format(instruction="q"), SCRIPT])


def _evaluate(protocol, benchmark="openbookqa", **kwargs):
    tokenizer = _tokenizer()
    model = ScriptedModel(tokenizer, SCRIPT)
    record = {"instruction": "q", "input": "", "output": "", "answer": "answer2"}
    report = evaluate_benchmarks(
        model,
        tokenizer,
        {benchmark: [record]},
        progress=False,
        greedy=True,
        **({} if protocol is None else {"protocol": protocol}),
        **kwargs,
    )
    return model, report.results[benchmark]


def test_perft_prompt_suffix_tokens_and_last_split():
    model, result = _evaluate("perft")
    # The tiny tokenizer splits on whitespace, so the prompt comes back with single spaces.
    assert model.prompts == [" ".join(PERFT_PROMPT.format(instruction="q").split())]
    assert model.lengths == [4] and result.max_new_tokens == 4
    # Generated: "answer1 ### Response: answer2" (4 tokens); the answer is after the last marker.
    assert result.examples[0]["response"] == "answer2"
    assert result.correct == 1


def test_llm_adapters_is_the_default_and_unchanged():
    model, result = _evaluate(None)
    assert model.prompts == [" ".join(LLM_ADAPTERS_PROMPT.format(instruction="q").split())]
    assert model.lengths == [32] and result.max_new_tokens == 32
    assert result.examples[0]["response"] == "answer1"  # after the first marker, up to the second
    assert result.correct == 0


def test_prompt_bytes_match_the_authors():
    """The suffix is appended right after the response line's 16-space indentation, no space or newline added."""
    from perft_peft.data import generate_eval_prompt

    perft = get_protocol("perft")
    assert generate_eval_prompt("q") + perft.suffix(_benchmark("boolq")) == PERFT_PROMPT.format(instruction="q")
    assert perft.suffix(_benchmark("gsm8k")) == ""


def _benchmark(name):
    from perft_peft.evaluation import get_benchmark

    return get_benchmark(name)


def test_arithmetic_keeps_its_prompt_and_length_but_reads_the_last_response():
    """math/math_evaluate.py: the plain prompt, 256 tokens (math/OLMoE-1B-7B.eval.sh), split at the last marker."""
    perft = get_protocol("perft")
    assert perft.suffix(_benchmark("gsm8k")) == "" and perft.tokens(_benchmark("gsm8k")) == 256
    assert perft.tokens(_benchmark("hellaswag")) == 4
    text = "prompt ### Response: 12 ### Response: 7"
    assert perft.response(text) == "7" and PROTOCOLS["llm-adapters"].response(text) == "12"
    with pytest.raises(ValueError, match="No '### Response:'"):
        perft.response("no marker here")


def test_max_new_tokens_overrides_the_protocol():
    model, result = _evaluate("perft", max_new_tokens=2)
    assert model.lengths == [2] and result.max_new_tokens == 2
    assert result.examples[0]["response"] == "the correct answer is answer1 ###"


def test_unknown_protocol_fails_before_generation():
    with pytest.raises(ValueError, match="Unknown evaluation protocol 'lm-eval'"):
        _evaluate("lm-eval")


def test_cli_flag(capsys):
    parser = cli.parser("")
    base = ["--adapter", "a", "--tiny", "--output_dir", "o"]
    assert cli.parse(parser, base).protocol == "llm-adapters"
    assert cli.parse(parser, [*base, "--protocol", "perft"]).protocol == "perft"
    with pytest.raises(SystemExit):
        cli.parse(parser, [*base, "--protocol", "lm-eval"])
    assert "invalid choice" in capsys.readouterr().err


def test_real_model_under_the_perft_protocol(tmp_path):
    """A tiny PERFT model: every commonsense response continues "the correct answer is" by at most 4 words; the
    report records the protocol, in JSON and in the markdown note."""
    tokenizer = tiny_word_tokenizer()
    base = tiny_moe("mixtral", vocab_size=len(tokenizer), max_position_embeddings=256)
    model = get_peft_model(base, PerftConfig(variant="R", init_weights=False))
    records = json.loads(fixture_path("piqa").read_text())
    report = evaluate_benchmarks(
        model, tokenizer, {"piqa": records}, limit=3, batch_size=3, greedy=True, protocol="perft", progress=False
    )
    for example in report.results["piqa"].examples:
        words = example["response"].split()
        assert words[:4] == ["the", "correct", "answer", "is"] and len(words) <= 8
    assert report.settings["protocol"] == "perft"
    report.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["protocol"] == "perft"
    assert "PERFT authors' protocol" in report.to_markdown()
