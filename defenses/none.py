"""The undefended model: the baseline every defense is compared with."""

from __future__ import annotations

from typing import ClassVar

from vlmbench.defense import Defense
from vlmbench.protocol import ReportedFigure


class NoDefense(Defense):
    """No defense: the model's own weights, classified as is."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "undefended model (baseline)"
    paper: ClassVar[str | None] = None  # the baseline: no paper
    code: ClassVar[str | None] = None
    reported: ClassVar[tuple[ReportedFigure, ...]] = ()
