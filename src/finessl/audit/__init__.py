"""``finessl audit``: what is wrong with a dataset, found before training.

One streaming pass of a model over the labeled set, the unlabeled pool and the test set
(``scan``) gives features, pixel hashes and image sizes; small functions over those arrays
find out-of-distribution pool images (``ood``), duplicates and test-set copies
(``duplicates``), the pool's class prior (``prior``) and seed labels that look wrong
(``suspects``); ``report`` writes ``audit.json``, CSV lists and an HTML page.
"""
