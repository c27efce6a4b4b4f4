"""vlmbench: adversarial-robustness benchmark for zero-shot vision-language models.

Core modules: :mod:`vlmbench.classifier` (pixels → logits), :mod:`vlmbench.registry` (plugins),
:mod:`vlmbench.protocol` (what a number means), :mod:`vlmbench.runner` (plan → cells → Parquet),
:mod:`vlmbench.results` (schema, summaries). Built-in plugins live in :mod:`vlmbench.attacks`,
:mod:`vlmbench.defenses` and :mod:`vlmbench.world`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vlmbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
