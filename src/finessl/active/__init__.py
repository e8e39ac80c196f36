"""Active learning: which images to label next, and simulated labeling rounds."""

from finessl.active import coverage, strategies  # noqa: F401  (registers every strategy)
