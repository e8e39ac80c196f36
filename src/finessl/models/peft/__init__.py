"""Parameter-efficient fine-tuning methods: one file each, chosen by ``model.peft``."""

from finessl.models.peft import adapter, ia3, lora, simple, ssf, vpt  # noqa: F401  (registration)
from finessl.models.peft.base import PEFT_METHODS, Peft, attach_peft

__all__ = ["PEFT_METHODS", "Peft", "attach_peft"]
