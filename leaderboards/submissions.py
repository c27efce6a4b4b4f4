"""Leaderboard submissions: ``leaderboards/submissions/<entry>/submission.json`` beside
``<entry>/results/**/*.parquet``.

``submission.json`` (every value is an untrusted string: it is checked for type and shape here and
never interpreted; the renderer escapes it)::

    {"method": "TeCoA + TTC", "paper": "https://...", "code": "https://...",
     "weights": "how to get the weights", "submitted_by": "name", "hardware": "1x A100",
     "notes": "optional"}

``paper`` and ``code`` are http(s) URLs or null. Torch-free, plugin-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmbench.errors import VlmbenchError

SUBMISSION_FILE = "submission.json"
RESULTS_FOLDER = "results"
REQUIRED: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "paper": (str, type(None)),
    "code": (str, type(None)),
    "weights": (str,),
    "submitted_by": (str,),
    "hardware": (str,),
}
OPTIONAL: dict[str, tuple[type, ...]] = {"notes": (str,)}
URL_KEYS = ("paper", "code")
MAX_LENGTH = 2000  # characters per value: metadata, not an essay


class SubmissionError(VlmbenchError):
    """A submission folder or its ``submission.json`` is missing or malformed (one line)."""


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else "a string" for t in types)


def is_http_url(value: str) -> bool:
    """``http://`` or ``https://`` followed by a host, without whitespace or control characters."""
    lowered = value.lower()
    for scheme in ("https://", "http://"):
        if lowered.startswith(scheme):
            rest = value[len(scheme):]
            host = rest.split("/", 1)[0]
            return bool(host) and not any(c.isspace() or ord(c) < 32 or c in "<>\"'`\\" for c in value)
    return False


def check_metadata(raw: Any, where: str) -> dict[str, Any]:
    """Validate a parsed ``submission.json``; return it (a plain dict of the known keys).

    Raises:
        SubmissionError: one line naming ``where`` and the first problem.
    """
    if not isinstance(raw, dict):
        raise SubmissionError(f"{where}: {SUBMISSION_FILE} must hold a JSON object, not {type(raw).__name__}")
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise SubmissionError(f"{where}: {SUBMISSION_FILE} lacks {', '.join(missing)}")
    unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise SubmissionError(f"{where}: {SUBMISSION_FILE} has unknown keys {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join([*REQUIRED, *OPTIONAL])})")
    for key, types in {**REQUIRED, **OPTIONAL}.items():
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, types):
            raise SubmissionError(f"{where}: {SUBMISSION_FILE} key {key} must be {_type_names(types)}, "
                                  f"not {type(value).__name__}")
        if isinstance(value, str):
            if len(value) > MAX_LENGTH:
                raise SubmissionError(f"{where}: {SUBMISSION_FILE} key {key} is longer than {MAX_LENGTH} characters")
            if key in REQUIRED and key not in URL_KEYS and not value.strip():
                raise SubmissionError(f"{where}: {SUBMISSION_FILE} key {key} is empty")
    for key in URL_KEYS:
        value = raw[key]
        if value is not None and not is_http_url(value):
            raise SubmissionError(f"{where}: {SUBMISSION_FILE} key {key} must be an http(s) URL or null")
    return {key: raw[key] for key in [*REQUIRED, *OPTIONAL] if key in raw}


def load_submission(folder: Path) -> tuple[dict[str, Any], Path]:
    """``(metadata, results_folder)`` of the submission at ``folder``.

    Raises:
        SubmissionError: no ``submission.json``, not JSON, a missing/ill-typed key, a non-http(s) URL,
            or no ``results/`` folder (one line naming the entry).
    """
    folder = Path(folder)
    where = f"submission {folder.name}"
    if not folder.is_dir():
        raise SubmissionError(f"{where}: {folder} is not a folder")
    file = folder / SUBMISSION_FILE
    if not file.is_file():
        raise SubmissionError(f"{where}: no {SUBMISSION_FILE} in {folder}")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise SubmissionError(f"{where}: {SUBMISSION_FILE} is not readable JSON ({reason})") from None
    metadata = check_metadata(raw, where)
    results = folder / RESULTS_FOLDER
    if not results.is_dir():
        raise SubmissionError(f"{where}: no {RESULTS_FOLDER}/ folder beside {SUBMISSION_FILE}")
    return metadata, results


def is_submission(folder: Path) -> bool:
    """Whether ``folder`` looks like a submission (holds a ``submission.json``)."""
    return Path(folder).is_dir() and (Path(folder) / SUBMISSION_FILE).is_file()
