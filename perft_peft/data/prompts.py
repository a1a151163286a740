"""LLM-Adapters' prompt templates, byte for byte.

PERFT and LoRACoE are trained and evaluated on LLM-Adapters' data with LLM-Adapters' prompts. Whitespace is part
of the prompt (it becomes tokens), so the strings below keep every trailing space and the 16-space indentation of
the originals instead of tidying them. Training and evaluation templates are *not* the same bytes: LLM-Adapters'
training script and its evaluation scripts each carry their own copy, and the copies differ in whitespace.
"""

from __future__ import annotations

from collections.abc import Mapping

# Training template. Source: AGI-Edgerunners/LLM-Adapters, finetune.py, generate_prompt(data_point).
# One trailing space after "request." with input, two without; the blank lines inside hold 16 spaces.
TRAIN_TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "                \n"
    "                ### Input:\n"
    "                {input}\n"
    "                \n"
    "                ### Response:\n"
    "                {output}"
)
TRAIN_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.  \n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "                \n"
    "                ### Response:\n"
    "                {output}"
)

# Evaluation template. Source: AGI-Edgerunners/LLM-Adapters, commonsense_evaluate.py and evaluate.py (the same
# generate_prompt(instruction, input=None) in both). No trailing space after "request." with input, one without;
# the blank lines inside are empty. The response is left empty for the model to complete.
EVAL_TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "\n"
    "                ### Input:\n"
    "                {input}\n"
    "\n"
    "                ### Response:\n"
    "                "
)
EVAL_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "\n"
    "                ### Response:\n"
    "                "
)

# LLM-Adapters' evaluation scripts cut the decoded generation at this marker and strip the rest.
RESPONSE_MARKER = "### Response:"


def generate_prompt(record: Mapping, with_output: bool = True) -> str:
    """The training prompt of an LLM-Adapters record, as ``finetune.py`` builds it.

    A record with a non-empty ``input`` uses the with-input variant. ``with_output=False`` leaves the response
    empty: that is the "user prompt" LLM-Adapters tokenizes to find how many tokens to mask when
    ``train_on_inputs`` is off. For prompting a model at evaluation time use :func:`generate_eval_prompt`, which
    reproduces the (differently spaced) evaluation scripts.
    """
    output = record["output"] if with_output else ""
    if record.get("input"):
        return TRAIN_TEMPLATE_WITH_INPUT.format(instruction=record["instruction"], input=record["input"], output=output)
    return TRAIN_TEMPLATE_NO_INPUT.format(instruction=record["instruction"], output=output)


def generate_eval_prompt(instruction: str, input: str | None = None) -> str:  # noqa: A002 (their name)
    """The evaluation prompt, as LLM-Adapters' ``commonsense_evaluate.py`` / ``evaluate.py`` build it.

    Their scripts pass only the record's ``instruction`` (every test set has ``input == ""``), so call this with
    ``record["instruction"]`` to match the published numbers.
    """
    if input:
        return EVAL_TEMPLATE_WITH_INPUT.format(instruction=instruction, input=input)
    return EVAL_TEMPLATE_NO_INPUT.format(instruction=instruction)


def extract_response(decoded: str) -> str:
    """The model's answer in a decoded generation: the text after the first ``### Response:``, stripped (up to a
    second marker, if the model wrote one), as LLM-Adapters' evaluation scripts take it."""
    parts = decoded.split(RESPONSE_MARKER)
    if len(parts) < 2:
        raise ValueError(f"No {RESPONSE_MARKER!r} marker in the generated text: {decoded[:200]!r}")
    return parts[1].strip()
