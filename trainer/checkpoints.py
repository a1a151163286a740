"""Which checkpoint a run may resume from: the latest intact one, written by this same run, with an adapter that
fits the model. Anything else is refused before training, with what differs."""

from __future__ import annotations

import json
import os
import re

from transformers.trainer import TRAINER_STATE_NAME

FINGERPRINT_NAME = "run_fingerprint.json"


def normalise(identity: dict) -> dict:
    """The identity as it reads back from JSON, so a fresh one compares equal to a saved one."""
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def write_fingerprint(folder: str, identity: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, FINGERPRINT_NAME), "w") as f:
        json.dump(normalise(identity), f, indent=2, sort_keys=True)


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: <saved> there, <current> now`` for every leaf that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return out


def latest_intact(output_dir: str, identity: dict, allow_other_run: bool = False) -> str:
    """The newest ``checkpoint-<step>`` that is intact (has ``trainer_state.json``, written last) and was written
    by this run (same fingerprint, unless ``allow_other_run``); says which newer ones were skipped and why. With
    only other runs' checkpoints, the error lists how the newest one differs."""
    steps = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = re.fullmatch(r"checkpoint-(\d+)", name)
            if match and os.path.isdir(os.path.join(output_dir, name)):
                steps.append((int(match.group(1)), name))
    skipped, foreign = [], []
    for _, name in sorted(steps, reverse=True):
        path = os.path.join(output_dir, name)
        if not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            skipped.append(f"{name} (no {TRAINER_STATE_NAME}: its save was interrupted)")
        elif not allow_other_run and other_run(path, identity):
            skipped.append(f"{name} (written by another run)")
            foreign.append(path)
        else:
            if skipped:
                print(
                    f"[perft-peft] skipping {', '.join(skipped)} in {output_dir}; resuming from {name}, which is "
                    "intact",
                    flush=True,
                )
            return path
    if foreign:
        check_same_run(foreign[0], identity, allow_other_run=False)  # raises, with the differences
    detail = f" (skipped: {', '.join(skipped)})" if skipped else ""
    raise ValueError(f"No intact checkpoint to resume from in {output_dir}{detail}.")


def other_run(checkpoint: str, identity: dict) -> list[str]:
    """How the run that wrote ``checkpoint`` differs from ``identity`` (empty: the same run, or no fingerprint)."""
    path = os.path.join(checkpoint, FINGERPRINT_NAME)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return differences(json.load(f), normalise(identity))


def check_same_run(checkpoint: str, identity: dict, allow_other_run: bool) -> None:
    """Refuse a checkpoint another run wrote (other settings), unless ``allow_other_run``."""
    if not os.path.isfile(os.path.join(checkpoint, FINGERPRINT_NAME)):
        print(f"[perft-peft] {checkpoint} has no {FINGERPRINT_NAME}: cannot check that this run wrote it", flush=True)
        return
    diff = other_run(checkpoint, identity)
    if diff and not allow_other_run:
        raise ValueError(
            f"{checkpoint} was written by another run; resuming would continue that run under this "
            f"run's name. Differences: {'; '.join(diff[:8])}. Use a fresh output_dir, or set "
            "resume_from_other_run (--resume_from_other_run) to resume it anyway."
        )


def check_adapter_fits(checkpoint: str, model) -> None:
    """The checkpoint's adapter has the model's adapter type and exactly its tensor names and shapes."""
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    peft_config = getattr(model, "peft_config", None)
    config_path = os.path.join(checkpoint, "adapter_config.json")
    weights_path = os.path.join(checkpoint, "adapter_model.safetensors")
    if not peft_config or not os.path.isfile(weights_path):
        return  # nothing to compare: transformers' own loading reports a missing adapter
    config = peft_config[model.active_adapter]
    if os.path.isfile(config_path):
        with open(config_path) as f:
            saved_type = json.load(f).get("peft_type")
        if saved_type != str(config.peft_type.value):
            raise ValueError(
                f"{checkpoint} holds a {saved_type} adapter, but the model has a "
                f"{config.peft_type.value} adapter: it cannot be resumed from."
            )
    expected = {key: tuple(getattr(t, "ds_shape", t.shape)) for key, t in get_peft_model_state_dict(model).items()}
    with safe_open(weights_path, framework="pt") as f:
        saved = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    problems = [f"{k} missing" for k in sorted(set(expected) - set(saved))]
    problems += [f"{k} unexpected" for k in sorted(set(saved) - set(expected))]
    problems += [
        f"{k} is {saved[k]} there, {expected[k]} in the model"
        for k in sorted(set(saved) & set(expected))
        if saved[k] != expected[k] and expected[k] != (0,)
    ]  # (0,): partitioned by ZeRO-3, shape unknown
    if problems:
        raise ValueError(
            f"The adapter in {checkpoint} does not fit the model ({len(problems)} problems: "
            f"{'; '.join(problems[:5])}): it was made for another adapter configuration."
        )


def ends_run(checkpoint: str, max_steps: int, num_train_epochs: float) -> bool:
    """Whether the checkpoint is already at the end of a run of this length (``max_steps``, else epochs)."""
    with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
        state = json.load(f)
    end = max_steps if max_steps > 0 else state.get("max_steps")
    same_length = max_steps > 0 or state.get("num_train_epochs") == num_train_epochs
    return bool(same_length and end and state.get("global_step", 0) >= end)
