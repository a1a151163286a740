"""Batching tokenised records: transformers' ``DataCollatorForSeq2Seq``, configured as LLM-Adapters does.

It pads ``input_ids`` / ``attention_mask`` with the tokenizer and ``labels`` with -100, to the longest example of
the batch rounded up to a multiple of 8, on the tokenizer's ``padding_side``:

- ``"right"`` (pads after the text): the usual choice for training; positions start at 0 for every example.
- ``"left"`` (pads before the text): what batched generation needs, and what LLM-Adapters sets for training
  too. The labels are padded on the same side, so they stay aligned with ``input_ids`` either way.

The side is the tokenizer's (so the base model's) and is not changed here: set ``tokenizer.padding_side``
before building the collator if you want the other one.
"""

from __future__ import annotations

from .tokenization import IGNORE_INDEX


def make_collator(tokenizer, pad_to_multiple_of: int | None = 8):
    """``DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=-100)``.

    Raises ``ValueError`` if the tokenizer has no pad token (Mixtral's and LLaMA's have none): call
    :func:`ensure_pad_token` first.
    """
    from transformers import DataCollatorForSeq2Seq

    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no pad token, so batches cannot be padded; call "
            "perft_peft.data.ensure_pad_token(tokenizer) (or set tokenizer.pad_token) first."
        )
    return DataCollatorForSeq2Seq(
        tokenizer,
        padding=True,
        pad_to_multiple_of=pad_to_multiple_of,
        label_pad_token_id=IGNORE_INDEX,
        return_tensors="pt",
    )


def ensure_pad_token(tokenizer):
    """Give a tokenizer without a pad token one, and return it.

    LLM-Adapters uses LLaMA's ``<unk>`` (id 0) so padding stays distinct from EOS; here: the unk token when there
    is one, else EOS. Padded positions are masked (attention 0, label -100) either way, so the choice only
    matters for readability of batches.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ValueError(f"{type(tokenizer).__name__} has neither a pad, unk nor eos token to pad with.")
    return tokenizer
