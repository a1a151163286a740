"""Batched generation with LLM-Adapters' evaluation prompt: what the model answers, before extraction.

As ``commonsense_evaluate.py`` does: prompts built from the ``instruction`` alone, padded on the left (so every
row's prompt ends where generation starts), pad = ``<unk>`` where the tokenizer has no pad token, beam search
without sampling, the decoded text cut after ``### Response:``. It works on a ``PeftModel`` and on a plain
transformers model alike: only ``generate`` is called.

Deliberate differences from LLM-Adapters, none of which changes what a correct model answers:

- ``evaluate.py`` (arithmetic) generates one question at a time; here every task is batched. Left padding with an
  attention mask gives the same answers up to floating-point noise; ``batch_size=1`` pads nothing, as there.
- Decoding skips special tokens for every task (``evaluate.py`` keeps them), so a tokenizer's EOS or pad token
  text can never be read as an answer (with LLaMA's or Mixtral's "</s>" there is nothing to read anyway).
- The KV cache is on (``evaluate.py`` turns it off; only speed differs), and the model keeps the dtype it was
  loaded in (LLM-Adapters casts to fp16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..data import ensure_pad_token, extract_response, generate_eval_prompt

# transformers >= 5 fills every generation setting left unset from the checkpoint's generation_config.json;
# LLM-Adapters' GenerationConfig had nothing else in it. Pin what would change a deterministic search's output.
_DETERMINISTIC_SEARCH = dict(
    do_sample=False,
    num_return_sequences=1,
    length_penalty=1.0,
    early_stopping=False,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    min_length=0,
)


def evaluation_generation_config(model, tokenizer, *, num_beams: int, max_new_tokens: int):
    """A GenerationConfig for beam search (greedy with ``num_beams=1``) that stops at the model's EOS."""
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id
    return GenerationConfig(
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id if eos is None else eos,
        **_DETERMINISTIC_SEARCH,
    )


@torch.no_grad()
def generate_responses(
    model,
    tokenizer,
    instructions: Sequence[str],
    *,
    num_beams: int,
    max_new_tokens: int,
    batch_size: int = 8,
    progress: bool = True,
    desc: str | None = None,
    prompt_suffix: str = "",
    read_response: Callable[[str], str] = extract_response,
) -> list[str]:
    """The model's response to each instruction (the text after ``### Response:``), in order.

    ``prompt_suffix`` is appended to every prompt and ``read_response`` finds the answer in the decoded text
    (prompt included): the evaluation protocol's choices (``protocols``); the defaults are LLM-Adapters'.

    The model is put in eval mode for the duration (dropout off) and returned to its previous mode; a tokenizer
    without a pad token gets one (``ensure_pad_token``).
    """
    from tqdm.auto import tqdm

    ensure_pad_token(tokenizer)
    config = evaluation_generation_config(model, tokenizer, num_beams=num_beams, max_new_tokens=max_new_tokens)
    was_training = model.training
    model.eval()
    responses = []
    try:
        starts = range(0, len(instructions), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            prompts = [generate_eval_prompt(i) + prompt_suffix for i in instructions[start : start + batch_size]]
            batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
            sequences = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=config
            )
            decoded = tokenizer.batch_decode(sequences, skip_special_tokens=True)
            responses += [read_response(text) for text in decoded]
    finally:
        model.train(was_training)
    return responses
