"""Backbones (frozen feature extractors), PEFT methods and cosine heads."""

from finessl.models.backbones import Backbone, build_backbone
from finessl.models.heads import CosineHead
from finessl.models.model import FinesslModel, build_model

__all__ = ["Backbone", "CosineHead", "FinesslModel", "build_backbone", "build_model"]
