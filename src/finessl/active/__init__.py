"""Active learning: which images to label next, and simulated labeling rounds."""
