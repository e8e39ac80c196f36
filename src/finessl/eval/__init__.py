"""Evaluation: metrics, and the HTML report of one run or several."""

from finessl.eval.metrics import classification_metrics, predict_logits

__all__ = ["classification_metrics", "predict_logits"]
