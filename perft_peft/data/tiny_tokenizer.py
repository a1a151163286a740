"""A word-level tokenizer built in code from the fixtures' words, so ``--tiny`` runs tokenize real-looking text
without downloading a tokenizer.

It splits on whitespace only (so ``decode(encode(text))`` gives the text with single spaces, "### Response:" stays
findable and "solution1" / "576" stay whole words for answer extraction), adds ``<s>`` in front like LLaMA-family
tokenizers, and keeps the ids that ``perft_peft.testing.tiny_config`` uses: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2.
Build the tiny model with ``vocab_size=len(tokenizer)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from .fixtures import FIXTURES_DIR
from .prompts import generate_eval_prompt, generate_prompt

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def tiny_word_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    vocabulary: Sequence[str] | None = None,
    add_bos: bool = True,
    padding_side: str = "right",
    model_max_length: int = 4096,
):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is the special tokens plus every whitespace-separated word
    of ``texts`` (default: all bundled fixtures rendered through the training and evaluation templates), or
    exactly ``vocabulary`` (the tokens in id order, starting with ``<pad> <s> </s>``) when given.

    Words outside the vocabulary map to ``<unk>`` (an error if ``vocabulary`` has none). The words of ``texts``
    are sorted, so the same texts give the same ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if vocabulary is None:
        if texts is None:
            texts = fixture_texts()
        words = {word for text in texts for word in text.split()} - set(SPECIAL_TOKENS)
        vocabulary = [*SPECIAL_TOKENS, *sorted(words)]
    elif texts is not None:
        raise ValueError("Give texts or a vocabulary, not both.")
    elif tuple(vocabulary[:3]) != SPECIAL_TOKENS[:3] or len(set(vocabulary)) != len(vocabulary):
        raise ValueError(f"A vocabulary starts with {' '.join(SPECIAL_TOKENS[:3])} and repeats no token.")
    vocab = {token: i for i, token in enumerate(vocabulary)}
    unk = "<unk>" if "<unk>" in vocab else None
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token=unk,
        padding_side=padding_side,
        model_max_length=model_max_length,
    )


def fixture_texts() -> list[str]:
    """Every bundled fixture record as the training prompt and the evaluation prompt plus its answer."""
    texts = []
    for path in sorted(FIXTURES_DIR.rglob("*.json")):
        for record in json.loads(path.read_text(encoding="utf-8")):
            texts.append(generate_prompt(record))
            texts.append(generate_eval_prompt(record["instruction"], record.get("input")))
            texts.append(str(record.get("answer", "")))
    return texts
