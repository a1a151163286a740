"""Tokenising LLM-Adapters records for causal-LM training, as LLM-Adapters' ``finetune.py`` does.

Its ``tokenize`` / ``generate_and_tokenize_prompt`` rules, kept so results stay comparable with the papers:

- the full prompt (template + output) is truncated to ``cutoff_len`` tokens (the papers use 256);
- EOS is appended only when the sequence is shorter than ``cutoff_len`` and does not already end in EOS, so a
  truncated example never learns to stop where it was cut;
- ``labels`` are a copy of ``input_ids``; with ``train_on_inputs=False`` the first *n* labels become -100, where
  *n* is the length of the prompt with an empty response tokenised on its own (no EOS).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from .prompts import generate_prompt

IGNORE_INDEX = -100  # ignored by torch's cross-entropy and by transformers' causal-LM loss


def tokenize_example(
    record: Mapping, tokenizer, cutoff_len: int = 256, train_on_inputs: bool = True, add_eos_token: bool = True
) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` of one record (plain lists, unpadded)."""
    if cutoff_len < 1:
        raise ValueError(f"cutoff_len must be positive, got {cutoff_len}.")
    input_ids, attention_mask = _tokenize(generate_prompt(record), tokenizer, cutoff_len, add_eos_token)
    labels = list(input_ids)
    if not train_on_inputs:
        prompt_ids, _ = _tokenize(generate_prompt(record, with_output=False), tokenizer, cutoff_len, False)
        n = min(len(prompt_ids), len(labels))
        labels = [IGNORE_INDEX] * n + labels[n:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _tokenize(text: str, tokenizer, cutoff_len: int, add_eos_token: bool) -> tuple[list[int], list[int]]:
    encoded = tokenizer(text, truncation=True, max_length=cutoff_len, padding=False, return_tensors=None)
    input_ids, attention_mask = list(encoded["input_ids"]), list(encoded["attention_mask"])
    eos = tokenizer.eos_token_id
    if add_eos_token:
        if eos is None:
            raise ValueError(
                "add_eos_token=True but the tokenizer has no eos_token; set one or pass add_eos_token=False."
            )
        if len(input_ids) < cutoff_len and (not input_ids or input_ids[-1] != eos):
            input_ids.append(eos)
            attention_mask.append(1)
    return input_ids, attention_mask


def tokenize_dataset(
    dataset,
    tokenizer,
    cutoff_len: int = 256,
    train_on_inputs: bool = True,
    add_eos_token: bool = True,
    num_proc: int | None = None,
    desc: str | None = None,
    source: str = "the data set",
    **map_kwargs,
):
    """Tokenise a ``datasets.Dataset`` (or each split of a ``DatasetDict``) with :func:`tokenize_example`.

    Uses ``dataset.map`` (progress bar and on-disk cache included, as with any ``map``) and drops the raw
    columns, leaving ``input_ids``, ``attention_mask`` and ``labels`` for the collator. ``map_kwargs`` go to
    ``map`` (``load_from_cache_file``, ``keep_in_memory``, ...). Examples left without a single label (the prompt
    fills ``cutoff_len``) are counted: a warning names how many, and a ``ValueError`` is raised if none has one
    (the language-model loss would be 0 at every step). ``source`` names the data in those messages.
    """
    if not (hasattr(dataset, "map") and hasattr(dataset, "column_names")):
        raise TypeError(
            f"tokenize_dataset expects a datasets.Dataset or DatasetDict, got {type(dataset).__name__}; "
            "for a single record use tokenize_example."
        )
    if isinstance(dataset.column_names, dict):  # DatasetDict: splits may have different columns
        return type(dataset)(
            {
                name: tokenize_dataset(
                    split,
                    tokenizer,
                    cutoff_len,
                    train_on_inputs,
                    add_eos_token,
                    num_proc,
                    desc,
                    f"{source} [{name}]",
                    **map_kwargs,
                )
                for name, split in dataset.items()
            }
        )
    if desc is None:
        desc = f"Tokenizing (cutoff_len={cutoff_len}, train_on_inputs={train_on_inputs})"
    tokenized = dataset.map(
        tokenize_example,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=desc,
        fn_kwargs=dict(
            tokenizer=tokenizer, cutoff_len=cutoff_len, train_on_inputs=train_on_inputs, add_eos_token=add_eos_token
        ),
        **map_kwargs,
    )
    unlabelled = len(tokenized) - _count_labelled(tokenized)
    if unlabelled:
        why = f"their prompt alone fills cutoff_len={cutoff_len} tokens, and train_on_inputs=False masks it"
        if unlabelled == len(tokenized):
            raise ValueError(
                f"{source}: none of the {len(tokenized)} examples has a token left to learn: {why}. "
                "Raise cutoff_len, or set train_on_inputs=True."
            )
        warnings.warn(
            f"{source}: {unlabelled} of {len(tokenized)} examples have no token left to learn ({why}); "
            "they add nothing to the loss, and a batch made only of them makes it 0/0 (NaN), which stops "
            "PerftTrainer. Filter them out, raise cutoff_len, or set train_on_inputs=True.",
            stacklevel=2,
        )
    return tokenized


def _count_labelled(tokenized) -> int:
    """Examples with at least one label that is not IGNORE_INDEX (in Arrow: fast on 170k examples)."""
    import pyarrow.compute as pc

    labels = tokenized.with_format("arrow")[:].column("labels")
    parents = pc.list_parent_indices(labels)
    return len(pc.unique(pc.filter(parents, pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX))))
