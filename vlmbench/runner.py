"""The runner's public face: ``execute(plan(RunRequest(...)))`` is what ``vlmbench run`` does.

Data flows one way: :class:`RunRequest` → :func:`plan` (:mod:`vlmbench.plan`: every name, ε and
parameter validated before any computation) → cells (:mod:`vlmbench.cell`: files, locks, resume,
per-cell flags), each computed batch by batch (:mod:`vlmbench.batch`) → one Parquet file per cell.
:func:`execute` (:mod:`vlmbench.execute`) decides which cell runs where.
"""

from __future__ import annotations

from vlmbench.cell import CellOutcome
from vlmbench.execute import execute
from vlmbench.plan import Plan, plan
from vlmbench.request import RunError, RunRequest

__all__ = ["CellOutcome", "Plan", "RunError", "RunRequest", "execute", "plan"]
