"""Sharing adapters on the Hugging Face Hub with a model card that says what they are.

peft writes a generic card when it saves an adapter, and transformers 5's ``push_to_hub`` (which ``PeftModel``
inherits) replaces it by transformers' own generic card — or keeps whatever card the repo already has. Neither
knows the method, its configuration, the paper's parameter accounting or how to load it. ``install_card_hooks``
(run by ``import perft_peft``) puts our card where peft and transformers write theirs, for PERFT and LoRACoE
adapters only: ``save_pretrained`` (and so ``Trainer.save_model`` / ``Trainer.push_to_hub``) and
``model.push_to_hub``. ``push_adapter`` (a saved folder) and ``push_to_hub`` (a model in memory) upload the adapter
with our card in one commit.

Our part of a card sits between two HTML comments (``CARD_BEGIN`` / ``CARD_END``) and is regenerated on every
save and push; text outside them (a Trainer's training summary, the user's own) is kept.

The accounting needs the trained model, which a saved folder does not have: the recipes record it at save time
in ``accounting.json`` beside the adapter (``save_accounting``), and the card reads it from there.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx  # httpx2 under huggingface_hub 2.x, httpx under 1.x
from peft import PeftConfig

from .accounting import ParameterAccounting, parameter_accounting
from .loracoe.card import card_description as loracoe_card_description
from .perft.card import card_description as perft_card_description

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ACCOUNTING_FILE = "accounting.json"
EVAL_RESULTS_FILE = "eval_results.md"
EVAL_REPORT_FILE = "eval_results.json"  # recipes/evaluate_adapter.py's table as data: the card's model-index
CARD_BEGIN = "<!-- perft-peft card: regenerated on every save and push; edit outside this block -->"
CARD_END = "<!-- end of perft-peft card -->"
# Each method's folder says what its adapters add to the model: (tag, name, one-line description) from its config.
CARD_DESCRIPTIONS = {"PERFT": perft_card_description, "LORACOE": loracoe_card_description}
PEFT_TYPES = tuple(CARD_DESCRIPTIONS)  # the adapter types whose cards are ours
DEFAULT_COMMIT_MESSAGE = "Upload adapter trained with perft-peft"


class HubPushError(RuntimeError):
    """A push that failed on the way to or on the Hub; the message says why and what was left as it was."""


def save_accounting(accounting: ParameterAccounting, output_dir: str | os.PathLike) -> None:
    """Record # Act. / % Act. beside the adapter, for the card (the saved folder alone cannot give them)."""
    record = {**dataclasses.asdict(accounting), "pct_activated": accounting.pct_activated}
    _write_atomic(Path(output_dir) / ACCOUNTING_FILE, json.dumps(record, indent=2) + "\n")


def load_accounting(output_dir: str | os.PathLike) -> ParameterAccounting | None:
    """The accounting ``save_accounting`` recorded in ``output_dir``, or None."""
    path = Path(output_dir) / ACCOUNTING_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return ParameterAccounting(**{f.name: record[f.name] for f in dataclasses.fields(ParameterAccounting)})


def model_card(
    source,
    *,
    repo_id: str | None = None,
    accounting: ParameterAccounting | None = None,
    eval_results: str | None = None,
    eval_report=None,
) -> ModelCard:
    """Our card for an adapter: ``source`` is a folder written by ``save_pretrained`` / ``Trainer.save_model``
    (accounting and evaluation read from its ``accounting.json`` / ``eval_results.md`` / ``eval_results.json``
    unless given) or a ``PeftModel`` (accounting computed from its trainable parameters). ``base_model`` is the
    adapter config's ``base_model_name_or_path``, the same value ``AutoPeftModelForCausalLM`` loads; ``repo_id``
    goes into the title and the loading snippet. ``eval_report``: a ``perft_peft.evaluation.EvalReport`` (or the
    path of its JSON), whose accuracies become the card's ``model-index`` (and its table, unless
    ``eval_results`` gives the markdown)."""
    from . import __version__

    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not (folder / ADAPTER_FILES[0]).is_file():
            raise FileNotFoundError(
                f"{folder} has no {ADAPTER_FILES[0]}: give the folder save_pretrained or "
                "Trainer.save_model wrote the adapter to."
            )
        config = PeftConfig.from_pretrained(str(folder))
        accounting = accounting or load_accounting(folder)
        eval_results, eval_report = _folder_evaluation(folder, eval_results, eval_report)
    else:
        config = source.peft_config[source.active_adapter]
        accounting = accounting or parameter_accounting(source)
    if isinstance(eval_report, (str, os.PathLike)):
        eval_report = _read_report(Path(eval_report))
    if eval_results is None and eval_report is not None:
        eval_results = eval_report.to_markdown()
    base_model = config.base_model_name_or_path or None  # a model built from a config has none
    peft_type = _value(config.peft_type)
    tag, name, description = _method(config, peft_type)
    title = repo_id.split("/")[-1] if repo_id else f"{name} adapter"
    data = ModelCardData(
        library_name="peft",
        base_model=base_model,
        tags=[tag, "peft", "moe"],
        pipeline_tag="text-generation" if _value(config.task_type) == "CAUSAL_LM" else None,
        model_name=title if eval_report is not None else None,
        eval_results=_model_index(eval_report),
    )
    versions = f"perft-peft {__version__}" + (f" and peft {config.peft_version}" if config.peft_version else "")
    sections = [
        f"# {title}",
        f"A **{name}** adapter"
        + (f" for `{base_model}`" if base_model else "")
        + (f": {description}" if description else "")
        + f". Made with {versions}.",
        "## Method and configuration\n\n" + _config_table(config),
        "## Parameters\n\n" + _accounting_text(accounting),
        "## How to load\n\n" + _usage(base_model or "<base model>", repo_id or "<user>/<repo>", peft_type),
    ]
    if eval_results:
        sections.append("## Evaluation\n\n" + eval_results.strip())
    body = "\n\n".join([CARD_BEGIN, *sections, CARD_END])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def updated_card(existing: ModelCard | None, ours: ModelCard, *, keep_foreign: bool = True) -> ModelCard:
    """``ours`` put into the card ``existing``: our block replaces the previous one (text around it is kept); a
    card without our block is kept below ours (``keep_foreign``) or replaced. Metadata: ours wins, other fields
    (license, datasets, a Trainer's model-index when ours has none) stay, and the tags are the union."""
    if existing is None:
        return ours
    text, block = existing.text, ours.text.strip()
    begin, end = text.find(CARD_BEGIN), text.find(CARD_END)
    if 0 <= begin < end:
        body = text[:begin] + block + text[end + len(CARD_END) :]
    elif keep_foreign and text.strip():
        body = block + "\n\n" + text.strip() + "\n"
    else:
        body = block + "\n"
    ours_data = ours.data.to_dict()
    data = {**existing.data.to_dict(), **ours_data}
    data["tags"] = ours_data["tags"] + [t for t in existing.data.tags or [] if t not in ours_data["tags"]]
    yaml = ModelCardData(**data, ignore_metadata_errors=True).to_yaml()
    return ModelCard(f"---\n{yaml}\n---\n\n{body.lstrip()}")


def write_model_card(
    model, output_dir: str | os.PathLike, *, repo_id: str | None = None, keep_foreign: bool = True
) -> ModelCard:
    """Write our card for ``model``'s active adapter to ``output_dir/README.md``, updating the card there
    (``updated_card``). The accounting and evaluation come from the folder's files when it has them (the
    recipes write ``accounting.json``; ``recipes/evaluate_adapter.py`` the ``eval_results`` files), else from the
    model."""
    folder = Path(output_dir)
    eval_results, eval_report = _folder_evaluation(folder, None, None)
    ours = model_card(
        model, repo_id=repo_id, accounting=load_accounting(folder), eval_results=eval_results, eval_report=eval_report
    )
    path = folder / "README.md"
    card = updated_card(ModelCard.load(path) if path.is_file() else None, ours, keep_foreign=keep_foreign)
    _write_atomic(path, str(card))
    return card


def install_card_hooks() -> None:
    """Make peft and transformers write our card for PERFT and LoRACoE adapters, where they write theirs:

    - ``PeftModel.create_or_update_model_card``, which ``save_pretrained`` calls (so ``Trainer.save_model``) and
      ``Trainer.create_model_card`` calls after writing its training summary (``Trainer.push_to_hub``);
    - ``PeftModel._upload_modified_files``, transformers' ``push_to_hub`` step that uploads the folder it saved,
      after it put its own card (the repo's current one, or a generic one) in it: ours goes in instead, keeping
      the tags it carries (``push_to_hub(tags=...)``) and the repo card's text outside our block.

    Any other adapter type takes peft's and transformers' own path, unchanged. Running it again changes nothing.
    """
    from peft import PeftModel

    if getattr(PeftModel.create_or_update_model_card, "_perft_peft_hook", False):
        return
    update_card, upload = PeftModel.create_or_update_model_card, PeftModel._upload_modified_files

    @functools.wraps(update_card)
    def create_or_update_model_card(self, output_dir: str):
        if not is_our_adapter(self):
            return update_card(self, output_dir)
        write_model_card(self, output_dir)

    @functools.wraps(upload)
    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        if is_our_adapter(self):
            write_model_card(self, working_dir, repo_id=repo_id, keep_foreign=False)
        return upload(self, working_dir, repo_id, *args, **kwargs)

    create_or_update_model_card._perft_peft_hook = _upload_modified_files._perft_peft_hook = True
    PeftModel.create_or_update_model_card = create_or_update_model_card
    PeftModel._upload_modified_files = _upload_modified_files


def push_adapter(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    token: str | None = None,
):
    """Upload the adapter saved in ``output_dir`` (adapter_config.json, adapter_model.safetensors) with our card
    as README.md, in one commit to ``repo_id`` (created if missing, ``private`` then applies; ``revision``: a
    branch, created from main if missing; ``token``: default the saved login or ``HF_TOKEN``).

    Returns the ``CommitInfo``; its ``oid`` is the revision to pin when loading. The card is the folder's
    README.md with our block regenerated for ``repo_id`` (``updated_card``; a README without our block, such as
    peft's generic card, is replaced); only after the commit succeeded is it
    written back to ``output_dir/README.md``, so the folder matches the repo; a failed push raises
    ``HubPushError`` and leaves ``output_dir`` exactly as it was.
    """
    folder = Path(output_dir)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no {' or '.join(missing)}: push_adapter uploads a folder written by "
            "save_pretrained or Trainer.save_model."
        )
    readme = folder / "README.md"
    existing = ModelCard.load(readme) if readme.is_file() else None
    card = str(updated_card(existing, model_card(folder, repo_id=repo_id), keep_foreign=False))
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in ADAPTER_FILES]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
    except Exception as exc:
        reason = _http_failure(exc, repo_id)
        if reason is None:
            raise
        raise HubPushError(
            f"Pushing {folder} to {repo_id} on {api.endpoint} failed: {reason}. {folder} is unchanged. A Hub commit "
            f"is all or nothing, so {repo_id} holds either all of this adapter or none of it; push again once that "
            "is fixed."
        ) from exc
    _write_atomic(folder / "README.md", card)
    print(f"[perft-peft] pushed {folder} to {repo_id}: commit {commit.oid}", flush=True)
    return commit


def push_to_hub(
    model,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    eval_results: str | None = None,
    eval_report=None,
    token: str | None = None,
):
    """Push the active adapter of a ``PeftModel`` with our card, in one commit, with ``push_adapter``'s errors
    (``model.push_to_hub(repo_id)`` gives the same card once ``perft_peft`` is imported). The accounting comes
    from the model's trainable parameters, so push the model you trained (or one loaded with
    ``is_trainable=True``). ``eval_results``: markdown for the Evaluation section; ``eval_report``: an
    ``EvalReport`` (or its JSON's path) for the table and the model-index. Returns the ``CommitInfo``."""
    adapter = model.active_adapter
    with tempfile.TemporaryDirectory(prefix="perft-push-") as tmp:
        model.save_pretrained(tmp, selected_adapters=[adapter])
        folder = Path(tmp) if adapter == "default" else Path(tmp) / adapter  # where peft saves other adapters
        save_accounting(parameter_accounting(model), folder)
        if eval_results is not None:
            (folder / EVAL_RESULTS_FILE).write_text(eval_results)
        if eval_report is not None:
            if isinstance(eval_report, (str, os.PathLike)):
                eval_report = _read_report(Path(eval_report))
            eval_report.to_json(folder / EVAL_REPORT_FILE)
        return push_adapter(
            folder, repo_id, revision=revision, private=private, commit_message=commit_message, token=token
        )


def is_our_adapter(model) -> bool:
    """Whether ``model``'s active adapter is PERFT or LoRACoE (a PeftModel; anything else is not)."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    return config is not None and _value(config.peft_type) in PEFT_TYPES


def _folder_evaluation(folder: Path, markdown: str | None, report):
    """(markdown, report) of the evaluation saved in ``folder``, where not given."""
    if markdown is None and (folder / EVAL_RESULTS_FILE).is_file():
        markdown = (folder / EVAL_RESULTS_FILE).read_text()
    if report is None and (folder / EVAL_REPORT_FILE).is_file():
        report = _read_report(folder / EVAL_REPORT_FILE)
    return markdown, report


def _read_report(path: Path):
    from .evaluation.report import EvalReport

    return EvalReport.from_json(path)


def _model_index(report) -> list[EvalResult] | None:
    """One EvalResult per benchmark: accuracy (%) on its test set, generated answers (LLM-Adapters' protocol)."""
    if report is None:
        return None
    from .evaluation.tasks import BENCHMARKS

    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=name,
            dataset_name=BENCHMARKS[name].label,
            dataset_split="test",
            metric_type="accuracy",
            metric_name="accuracy (%)",
            metric_value=round(result.accuracy, 2),
        )
        for name, result in report.results.items()
    ]


def _method(config, peft_type: str) -> tuple[str, str, str | None]:
    """The card's tag, the method's name and a one-line description of what it adds to the model."""
    if peft_type in CARD_DESCRIPTIONS:
        return CARD_DESCRIPTIONS[peft_type](config)
    return peft_type.lower(), f"peft {peft_type}", None


def _config_table(config) -> str:
    """The method's own fields (peft's bookkeeping fields left out, except the type), unset ones skipped."""
    common = {f.name for f in dataclasses.fields(PeftConfig)}
    fields = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in config.to_dict().items()}
    rows = [(k, v) for k, v in fields.items() if k not in common and v not in (None, [], {})]
    rows += [(k, _value(getattr(config, k))) for k in ("peft_type", "task_type") if getattr(config, k)]
    return "\n".join(["| field | value |", "|---|---|"] + [f"| `{k}` | {_cell(v)} |" for k, v in rows])


def _cell(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(_value(value))
    return "`" + text.replace("|", "\\|") + "`"  # a regex in target_modules must not split the table row


def _value(x):
    """An enum's value (peft's PeftType / TaskType), anything else as it is."""
    return getattr(x, "value", x)


def _accounting_text(accounting: ParameterAccounting | None) -> str:
    if accounting is None or accounting.trainable == 0:
        return (
            "Not recorded: the recipes write `accounting.json` at save time; `perft_peft.hub.push_to_hub(model, "
            "...)` computes it from the trained model."
        )
    return (
        "| trainable params | # Act. (activated trainable per token) | base activated params | % Act. |\n"
        "|---|---|---|---|\n"
        f"| {accounting.trainable:,} | {accounting.activated_trainable:,} | {accounting.base_activated:,} | "
        f"{accounting.pct_activated:.4f} |\n\n"
        "As in the PERFT paper: # Act. counts the adapter parameters a token uses, % Act. their ratio to the "
        "base model's activated parameters (all but the routed experts a token skips)."
    )


def _usage(base_model: str, repo_id: str, peft_type: str) -> str:
    key_error = (
        f"  # pip install perft-peft: registers {peft_type} with peft (else KeyError: '{peft_type}')"
        if peft_type in PEFT_TYPES
        else ""
    )
    return (
        f"```python\nimport perft_peft{key_error}\n"
        "from peft import AutoPeftModelForCausalLM, PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base_model}")\n'
        f'model = PeftModel.from_pretrained(base, "{repo_id}")  # revision="<commit sha>" pins a version\n'
        f'# or: AutoPeftModelForCausalLM.from_pretrained("{repo_id}"), or base.load_adapter("{repo_id}")\n```'
    )


def _http_failure(exc: BaseException, repo_id: str) -> str | None:
    """What went wrong, in words, if ``exc`` (or what caused it) is an HTTP failure; None otherwise."""
    while exc is not None and not isinstance(exc, httpx.HTTPError):
        exc = exc.__cause__ or exc.__context__
    if exc is None:
        return None
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        detail = exc.server_message or str(exc).strip().splitlines()[0]
        if status in (401, 403):
            return (
                f"the Hub refused the token ({status}: {detail}); set HF_TOKEN or run `hf auth login` with a "
                f"token that may write to {repo_id.split('/')[0]}"
            )
        return f"the Hub answered {status}: {detail}"
    return f"the connection to the Hub failed or was lost ({type(exc).__name__}: {str(exc).rstrip('.')})"


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step: an interrupted write leaves the old file, never half of the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
