"""Teach peft about our two methods.

peft 0.21 has no plugin entry point and ``register_peft_method`` only accepts names already in the ``PeftType``
enum, so we add the members first. Everything here is idempotent: importing ``perft_peft`` twice (or reloading it)
must not raise "There is already PEFT method called ...".
"""

from peft import PeftType
from peft.utils.peft_types import register_peft_method


def _add_peft_type(name: str) -> None:
    """Add ``name`` to peft's ``PeftType`` str-enum unless it is already a member."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member.__init__(name)
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._member_names_.append(name)
    PeftType._value2member_map_[name] = member


def register(name: str, config_cls, model_cls, prefix: str) -> None:
    """Register a tuner with peft once; later calls (re-imports) only refresh the class objects."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    _add_peft_type(name.upper())
    peft_type = PeftType[name.upper()]
    if peft_type in PEFT_TYPE_TO_TUNER_MAPPING:
        # Re-import (e.g. importlib.reload): keep peft pointing at the live classes.
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
