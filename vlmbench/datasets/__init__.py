"""Real zero-shot datasets (:mod:`vlmbench.datasets.real`) and their class names and prompts (:mod:`vlmbench.datasets.text`).

They register through the ``vlmbench.datasets`` entry-point group like any third-party dataset.
"""
