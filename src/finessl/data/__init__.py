"""Datasets, labeled/unlabeled splits and the weak / strong / test augmentations."""

from finessl.data import hf_datasets, paper_datasets  # noqa: F401  (registration)
from finessl.data.datasets import DATASETS, SourceData, load_source
from finessl.data.ssl_data import SSLData, build_ssl_data

__all__ = ["DATASETS", "SSLData", "SourceData", "build_ssl_data", "load_source"]
