"""Build the leaderboard site on disk: collect → site model → render → write, atomically.

:func:`build` never leaves a half-written site: every file goes to a fresh temporary folder next to
``out`` (same file system), which then replaces ``out`` by two renames (the previous site, if any, is
moved aside first and deleted afterwards). An existing ``out`` is replaced only when it is a previous
vlmbench site (it holds the marker file :data:`MARKER`) or an empty folder; anything else is refused
with a one-line :class:`~vlmbench.errors.VlmbenchError`, before any work.

The data layer (:mod:`vlmbench.leaderboards.collect`, :mod:`vlmbench.leaderboards.boards`) is imported
inside :func:`build`, so this module imports without it; nothing here imports a plugin or torch.
"""

from __future__ import annotations

import http.server
import json

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmbench.errors import VlmbenchError
from vlmbench.leaderboards.model import Site

__all__ = ["BuildReport", "MARKER", "build", "write_site", "check_target"]

MARKER = ".vlmbench-site"
MARKER_TEXT = b"This folder is a static site written by `vlmbench leaderboard build`; a rebuild replaces it whole.\n"


@dataclass
class BuildReport:
    """What a build wrote: file count and bytes, boards, entries, and one line per invalid entry."""

    out: Path
    files: int
    bytes: int
    boards: int
    entries: int
    invalid: list[str] = field(default_factory=list)  # "NAME: one-line error"

    def summary(self) -> str:
        """One line: ``wrote N files (X kB) to OUT: B boards, E entries (I invalid)``."""
        return (
            f"wrote {self.files} files ({self.bytes / 1000:.1f} kB) to {self.out}: {self.boards} board{'s' * (self.boards != 1)}, "
            f"{self.entries} entr{'ies' if self.entries != 1 else 'y'} ({len(self.invalid)} invalid)"
        )


def check_target(out: Path) -> None:
    """Refuse (VlmbenchError) an ``out`` that exists and is neither a previous vlmbench site nor an
    empty folder."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise VlmbenchError(f"--out {out} exists and is not a folder; choose a new folder for the site")
    if (out / MARKER).is_file():
        return
    if any(out.iterdir()):
        raise VlmbenchError(f"--out {out} exists and is not a vlmbench site (no {MARKER} file); choose a new or empty folder, it would be replaced")


def _read_report(path: Path, what: str, usable: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """A JSON report ``what`` from ``path`` if ``usable(report)``; one-line error naming ``expected`` if not."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VlmbenchError(f"{what} {path}: cannot read it ({exc})") from None
    if not isinstance(report, dict) or not usable(report):
        raise VlmbenchError(f"{what} {path}: not a report of {expected}")
    return report


def _cells_with(report: dict[str, Any], keys: set[str]) -> bool:
    cells = report.get("cells")
    return isinstance(cells, list) and all(isinstance(c, dict) and keys <= set(c) for c in cells)


def read_reproduction(path: Path) -> dict[str, Any]:
    """The JSON report of ``python -m vlmbench.leaderboards.world reproduce``; one-line error if unusable."""
    return _read_report(path, "reproduction report", lambda r: _cells_with(r, {"cell_id", "status"}),
                        "`vlmbench.leaderboards.world reproduce` (no cells with cell_id and status)")


def apply_reproduction(site: Site, report: dict[str, Any]) -> None:
    """Attach the report to ``site`` and mark each board row that has re-run cells of its own entry:
    ``yes (k cells)``, or ``no: …`` naming the cells that did not reproduce or were stale."""
    site.reproduction = report
    status = {c["cell_id"]: c for c in report["cells"]}
    entry = report.get("entry")
    for board in site.boards:
        for row in board.rows:
            if entry is not None and row.entry != entry:
                continue
            checked = [status[c] for c in row.cells if c in status]
            if not checked:
                continue
            bad = [c for c in checked if c["status"] != "reproduced"]
            if not bad:
                row.reproduced = f"yes ({len(checked)} cell{'s' * (len(checked) != 1)} re-run)"
            else:
                row.reproduced = "no: " + "; ".join(f"{c.get('attack', '?')} {c.get('dataset', '?')} {c['status']}" for c in bad)


def read_verification(path: Path) -> dict[str, Any]:
    """The JSON report of ``vlmbench results verify --report``; one-line error if unusable."""
    return _read_report(path, "verification report",
                        lambda r: r.get("kind") == "vlmbench results verify" and _cells_with(r, {"cell_id", "status"}),
                        "`vlmbench results verify --report`")


def apply_verification(site: Site, report: dict[str, Any]) -> None:
    """Mark each board row ``verified`` whose every cell was re-scored from its stored adversarial
    images and agreed (status ``verified``; clean-only cells, ``no attack``, need no images). A row
    with any cell unverified, failed or missing from the report stays unmarked."""
    status = {c["cell_id"]: c["status"] for c in report["cells"] if c["cell_id"] is not None}
    for board in site.boards:
        for row in board.rows:
            found = [status.get(cell) for cell in row.cells]
            row.verified = "verified" in found and all(s in ("verified", "no attack") for s in found)


def write_site(files: dict[str, bytes], out: Path) -> None:
    """Write ``files`` (relative path → bytes) as the folder ``out``, replacing a previous site.

    The files go to a temporary sibling folder first; ``out`` changes only once they are all written
    (two renames: the old site aside, the new one in). On any error the temporary folder is removed
    and ``out`` is left as it was.
    """
    out = Path(out).absolute()
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    old: Path | None = None
    try:
        root = staging.resolve()
        for rel, content in files.items():
            target = (staging / rel).resolve()
            if root not in target.parents or rel.startswith("/") or ".." in rel.split("/"):
                raise VlmbenchError(f"refusing to write {rel!r} outside the site folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        (staging / MARKER).write_bytes(MARKER_TEXT)
        for folder, _, _ in os.walk(staging):
            os.chmod(folder, 0o755)  # mkdtemp made it 0700: a web server must read it
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "site")
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and (old / "site").exists() and not out.exists():
            os.replace(old / "site", out)  # put the previous site back
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build(sources: list[Path], out: Path, submissions: Path | None = None,
          reproduction: Path | None = None, verification: Path | None = None) -> BuildReport:
    """Collect the results in ``sources`` (and the submissions folder), compute the boards, render
    the site and write it to ``out`` atomically (see :func:`write_site`).

    Each board's per-sample rows (``boards.board_samples``) are written as ``board/<id>.samples.csv``.
    Raises VlmbenchError for a refused ``out`` (before any work)
    or for what the data layer rejects.
    """
    out = Path(out)
    check_target(out.absolute())
    from vlmbench.leaderboards import boards
    from vlmbench.leaderboards.collect import collect
    from vlmbench.leaderboards.render import render_site

    collection = collect([Path(s) for s in sources], None if submissions is None else Path(submissions))
    site = boards.site_model(collection, boards.load_standards())
    if reproduction is not None:
        apply_reproduction(site, read_reproduction(Path(reproduction)))
    if verification is not None:
        apply_verification(site, read_verification(Path(verification)))
    samples = boards.board_samples(collection, site)
    files = render_site(site, samples)
    write_site(files, out)
    return BuildReport(
        out=out,
        files=len(files) + 1,
        bytes=sum(map(len, files.values())) + len(MARKER_TEXT),
        boards=len(site.boards),
        entries=len(site.entries),
        invalid=[f"{e.name}: {e.error or 'invalid'}" for e in site.entries if not e.valid],
    )


def serve(site: Path, port: int = 8000) -> None:
    """Serve a built site on http://127.0.0.1:PORT/ until interrupted (0: any free port).

    Raises:
        VlmbenchError: ``site`` is not a built site, the port is out of range or taken.
    """
    import functools
    import http.server

    import typer

    site = Path(site)
    if not (site / "index.html").is_file():
        raise VlmbenchError(f"{site} is not a built site (no index.html); run `vlmbench leaderboard build RESULTS --out {site}` first")
    if not 0 <= port <= 65535:
        raise VlmbenchError(f"--port {port} is not a port number (0-65535)")
    handler = functools.partial(QuietHandler, directory=str(site))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise VlmbenchError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; choose another --port") from None
    with server:
        typer.echo(f"serving {site} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of the site (CSV and JSON with their types); one log line per request on stderr."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".csv": "text/csv; charset=utf-8", ".json": "application/json"}
