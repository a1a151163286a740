"""Training and evaluation data in the LLM-Adapters format, the data PERFT and LoRACoE are trained on.

The pieces, each in its own module: the record format and its check (``records``), the prompt templates copied
byte for byte from LLM-Adapters (``prompts``), loading from a file, directory or Hub id (``loading``),
tokenisation with LLM-Adapters' cutoff / EOS / label-masking rules (``tokenization``), the padding collator
(``collate``), the LoRACoE paper's commonsense + OrcaMath mixture (``mixture``), and bundled fixtures with a
tokenizer built from their words for offline tiny runs (``fixtures``, ``tiny_tokenizer``). ``datasets`` is imported
only by the functions that need it.
"""

from .collate import ensure_pad_token, make_collator
from .fixtures import FIXTURES_DIR, available_fixtures, fixture_path
from .loading import load_llm_adapters_dataset
from .mixture import ORCA_MATH, ORCA_MATH_FIXTURE, MixturePart, load_mixture, loracoe_mixture
from .prompts import (
    EVAL_TEMPLATE_NO_INPUT,
    EVAL_TEMPLATE_WITH_INPUT,
    RESPONSE_MARKER,
    TRAIN_TEMPLATE_NO_INPUT,
    TRAIN_TEMPLATE_WITH_INPUT,
    extract_response,
    generate_eval_prompt,
    generate_prompt,
)
from .records import EVAL_REQUIRED_FIELDS, FIELDS, REQUIRED_FIELDS, RecordError, check_records
from .tiny_tokenizer import tiny_word_tokenizer
from .tokenization import IGNORE_INDEX, tokenize_dataset, tokenize_example

__all__ = [
    "EVAL_REQUIRED_FIELDS",
    "EVAL_TEMPLATE_NO_INPUT",
    "EVAL_TEMPLATE_WITH_INPUT",
    "FIELDS",
    "FIXTURES_DIR",
    "IGNORE_INDEX",
    "MixturePart",
    "ORCA_MATH",
    "ORCA_MATH_FIXTURE",
    "REQUIRED_FIELDS",
    "RESPONSE_MARKER",
    "RecordError",
    "TRAIN_TEMPLATE_NO_INPUT",
    "TRAIN_TEMPLATE_WITH_INPUT",
    "available_fixtures",
    "check_records",
    "ensure_pad_token",
    "extract_response",
    "fixture_path",
    "generate_eval_prompt",
    "generate_prompt",
    "load_llm_adapters_dataset",
    "load_mixture",
    "loracoe_mixture",
    "make_collator",
    "tiny_word_tokenizer",
    "tokenize_dataset",
    "tokenize_example",
]
