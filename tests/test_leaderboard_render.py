"""The static leaderboard renderer: determinism, escaping, slugs, downloads, offline pages, and the
atomic site writer and CLI (with a fake data layer). Real-browser checks are in
test_leaderboard_browser.py."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from leaderboard_fixtures import (
    FORMULA_ENTRY,
    JS_URL,
    QUOTED_CODE_URL,
    TECOA_BOARD,
    WORLD_BOARD,
    XSS_DEFENSE,
    fixture_samples,
    fixture_site,
)
from vlmbench.errors import VlmbenchError
from vlmbench.leaderboards import plots
from vlmbench.leaderboards.render import csv_safe, http_url, render_site, slug

TESTS = Path(__file__).parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return render_site(fixture_site(), fixture_samples())


def pages(files: dict[str, bytes]) -> dict[str, str]:
    return {path: content.decode() for path, content in files.items() if path.endswith(".html")}


class Tags(HTMLParser):
    """Every start tag with its attributes, every id, and the text outside script/style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    return parser


# ------------------------------------------------------------------------------------ determinism


def test_render_is_byte_identical_twice(files):
    again = render_site(fixture_site(), fixture_samples())
    assert list(again) == list(files)
    assert [p for p in files if files[p] != again[p]] == []


def test_pages_and_downloads_are_there(files):
    for path in ("index.html", "flags.html", "about.html", "entries.csv", "entries.json", "site.json",
                 f"board/{WORLD_BOARD}.html", f"board/{TECOA_BOARD}.html", f"board/{WORLD_BOARD}.samples.csv",
                 "defense/ttc.html", "defense/tecoa.html", "model/world-rn.html", "dataset/world-shape.html"):
        assert path in files, path
    assert f"board/{TECOA_BOARD}.samples.csv" not in files  # no samples given for it
    for path in files:
        if path.endswith(".html") and "/" in path:
            stem = path[: -len(".html")]
            assert f"{stem}.csv" in files and f"{stem}.json" in files, path
    for path, content in files.items():
        if path.endswith(".json"):
            json.loads(content)
        elif path.endswith(".csv"):
            rows = list(csv.reader(io.StringIO(content.decode())))
            assert rows and all(len(r) == len(rows[0]) for r in rows), path


def test_board_downloads_hold_the_rows_in_rank_order(files):
    site = fixture_site()
    board = site.boards[0]
    data = json.loads(files[f"board/{WORLD_BOARD}.json"])
    assert data["board"]["id"] == WORLD_BOARD and data["board"]["standard"]["attacks"] == ["pgd-10", "cw-10", "aa"]
    assert [r["defense"] for r in data["rows"]] == [r.defense for r in board.rows]
    table = list(csv.DictReader(io.StringIO(files[f"board/{WORLD_BOARD}.csv"].decode())))
    assert [r["rank"] for r in table] == ["1", "2", "3", "", ""]
    assert table[0]["worst"] == "44.2" and float(table[0]["worst_low"]) < 44.2 < float(table[0]["worst_high"])
    assert table[0]["aa"] == "44.9" and table[3]["aa"] == ""
    assert table[3]["status"] == "incomplete" and "attack aa not run" in json.loads(table[3]["reasons"])


def test_plots_are_deterministic_svg_with_title():
    points = [plots.Point("a", 50, 20, "complete"), plots.Point(XSS_DEFENSE, 60, 30, "unreliable")]
    first = plots.scatter_clean_robust(points, "Title <x>", "s")
    assert first == plots.scatter_clean_robust(points, "Title <x>", "s")
    assert first.startswith("<svg ") and "<?xml" not in first and "DOCTYPE" not in first
    assert '<title>Title &lt;x&gt;</title>' in first and 'aria-label="Title &lt;x&gt;"' in first
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in first and "<script" not in first
    assert re.search(r"\b(?:xlink:)?href=\"(?!#)", first) is None  # no external reference
    # mathtext is not interpreted: a '$' in a name is literal text
    assert "$x$" in plots.robust_vs_eps([plots.Series("$x$", ((1, 5, "1/255"),))], "t", "c")


# ------------------------------------------------------------------------------------- escaping


def test_untrusted_strings_are_escaped_on_every_page(files):
    for path, html in pages(files).items():
        assert html.count("<script") == 1, path  # only the inlined table script
        assert "alert(1)</script>" not in html.replace("<script>", ""), path
        for raw in ("<img src=x", "</pre><script>", 'b="q"', "alert(2)</script>"):
            assert raw not in html, (path, raw)
        tags = parse(html)
        for tag, attrs in tags.tags:
            assert not any(name.startswith("on") for name in attrs), (path, tag, attrs)
            assert tag not in ("iframe", "object", "embed", "form", "base"), (path, tag)
    board = parse(files[f"board/{WORLD_BOARD}.html"].decode())
    assert XSS_DEFENSE in "".join(board.text)  # shown as text
    index = pages(files)["index.html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert '&lt;img src=x onerror=alert(4)&gt;' in index  # the invalid entry's error, escaped
    assert "O&#39;Brien &#34;the tester&#34;" in index


def test_only_http_urls_become_links(files):
    assert http_url("https://example.org/x") == "https://example.org/x"
    for bad in (JS_URL, "JavaScript:alert(1)", " https://x.org", "data:text/html,x", "//evil.org/x", "http://", "ftp://x.org", "https://x.org/\n", None, 3):
        assert http_url(bad) is None, bad
    for path, html in pages(files).items():
        for tag, attrs in parse(html).tags:
            href = attrs.get("href") or ""
            assert not href.lower().lstrip().startswith(("javascript:", "data:text", "vbscript:")), (path, href)
    index = pages(files)["index.html"]
    assert "paper: javascript:alert(1)" in index  # as text
    board = pages(files)[f"board/{WORLD_BOARD}.html"]
    assert 'href="https://example.org/code?a=1&amp;b=&#34;q&#34;"' in board  # quotes escaped inside the attribute
    external = {attrs["href"] for html in pages(files).values() for tag, attrs in parse(html).tags if tag == "a" and (attrs.get("href") or "").startswith("http")}
    site = fixture_site()
    known = {u for b in site.boards for r in b.rows for u in (r.paper, r.code) if u} | {
        e.metadata.get(k) for e in site.entries for k in ("paper", "code") if e.metadata.get(k)}
    assert external and external <= known
    assert QUOTED_CODE_URL in external


def test_no_network_references(files):
    for path, html in pages(files).items():
        tags = parse(html)
        csp = [a["content"] for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
        assert csp and "default-src 'none'" in csp[0] and "connect-src" not in csp[0], path
        for tag, attrs in tags.tags:
            for name in ("src", "href", "srcset", "action", "data", "poster", "xlink:href"):
                value = (attrs.get(name) or "").strip()
                if not value or (tag == "a" and name == "href"):
                    continue
                assert not re.match(r"^(?:[a-z][a-z0-9+.-]*:|//)", value, re.I) or value == "data:,", (path, tag, name, value)
        assert not re.search(r"\b(?:fetch|XMLHttpRequest|WebSocket|EventSource|importScripts)\s*\(", html), path
        assert "@import" not in html and "url(http" not in html, path


def test_ci_shown_with_interval_in_attributes(files):
    html = pages(files)[f"board/{WORLD_BOARD}.html"]
    cell = re.search(r'<td class="num worst" data-sort="44.2" data-low="([\d.]+)" data-high="([\d.]+)" data-n="80" title="95% CI ([\d.]+)–([\d.]+) \(n=80\)">44.2 <span class="ci">±([\d.]+)</span></td>', html)
    assert cell, "worst-case cell of the first row"
    assert float(cell[1]) < 44.2 < float(cell[2])


def test_board_page_states_the_standard_flags_and_paper_figure(files):
    html = pages(files)[f"board/{WORLD_BOARD}.html"]
    text = " ".join("".join(parse(html).text).split())
    for needle in ("pgd-10, cw-10, aa", "adaptive rule", "world-colour", "Table 1 of Xing et al., CVPR 2025",
                   "protocol: their own zero-shot protocol", "reproduced: yes", "verified", "incomplete", "unreliable",
                   "attack aa not run", "×6.7", "5.0 / 2.0", "14.9"):
        assert needle in text, needle
    assert 'href="../flags.html#zero-gradients"' in html
    assert 'href="../defense/ttc.html"' in html
    assert "<svg " in html and "Clean vs worst-case robust accuracy" in html
    ttc = pages(files)["defense/ttc.html"]
    assert ttc.count("<svg ") == 2 and "Oblivious vs adaptive" in ttc  # ε curve + paired bars
    for needle in ("weights fingerprint", "git revision", "99b23ad", "open_clip_torch 3.3.0", "vlmbench run --model world-rn", "2025-06-01T12:00:00+00:00", "Linux-6.1-x86_64"):
        assert needle in ttc, needle
    assert pages(files)["defense/tecoa.html"].count("<svg ") == 1  # a training defense: the curve only
    flags = parse(pages(files)["flags.html"])
    assert {"zero-gradients", "robust-above-clean", "eps-not-monotone", "forward-randomness"} <= flags.ids


def test_the_board_names_each_row_s_precision(files):
    table = " ".join("".join(parse(pages(files)[f"board/{TECOA_BOARD}.html"]).text).split())
    assert "precision" in table and table.count(" bf16 ") == 1 and table.count(" fp32 ") == 2


def test_internal_links_resolve(files):
    ids = {path: parse(html).ids for path, html in pages(files).items()}
    checked = 0
    for path, html in pages(files).items():
        for tag, attrs in parse(html).tags:
            href = attrs.get("href")
            if tag != "a" or not href or href.startswith(("http://", "https://")):
                continue
            parts = urlsplit(href)
            assert not parts.scheme and not parts.netloc, (path, href)
            target = os.path.normpath(os.path.join(os.path.dirname(path), unquote(parts.path))) if parts.path else path
            assert target in files, (path, href)
            if parts.fragment:
                assert unquote(parts.fragment) in ids[target], (path, href)
            checked += 1
    assert checked > 200


# ----------------------------------------------------------------------------------- file names


@pytest.mark.parametrize("name", ["tecoa", "TeCoA", "../../etc/passwd", "a/b", "a:b", "..", ".", "", "-rf", "x" * 300, XSS_DEFENSE, "ViT-B-32:openai", "ü", "con", "a.b"])
def test_slug_is_a_safe_file_name(name):
    s = slug(name)
    assert re.fullmatch(r"[a-z0-9_+-]{1,100}", s) and not s.startswith(("-", "+")), s
    assert slug(name) == s


def test_distinct_names_get_distinct_slugs(files):
    names = ["tecoa", "TeCoA", "a/b", "a:b", "a-b", "A-B", "..", "", ".", "x" * 100, "x" * 101, "ttc", "ttc "]
    assert len({slug(n) for n in names}) == len(names)
    assert slug("tecoa") == "tecoa" and slug("world-linf-4_255-adaptive") == "world-linf-4_255-adaptive"
    assert "defense/tecoa.html" in files and f"defense/{slug('TeCoA')}.html" in files
    for path in files:
        assert not path.startswith("/") and ".." not in path.split("/") and "\\" not in path, path
        assert re.fullmatch(r"(?:(?:board|defense|model|dataset)/)?[a-z0-9_+-]+(?:\.samples)?\.(?:html|csv|json)", path), path


# --------------------------------------------------------------------------------- CSV injection


def test_csv_cells_cannot_become_formulas(files):
    assert csv_safe("=1+1") == "'=1+1" and csv_safe("+1") == "'+1" and csv_safe("-1") == "'-1" and csv_safe("@SUM(A1)") == "'@SUM(A1)"
    assert csv_safe("\t=1") == "'\t=1" and csv_safe("ok") == "ok" and csv_safe(-1.5) == -1.5 and csv_safe(None) is None
    board = list(csv.DictReader(io.StringIO(files[f"board/{WORLD_BOARD}.csv"].decode())))
    assert board[4]["entry"] == "'" + FORMULA_ENTRY
    samples = list(csv.DictReader(io.StringIO(files[f"board/{WORLD_BOARD}.samples.csv"].decode())))
    assert [r["note"] for r in samples[:3]] == ["'=1+1", "'-2", "ok"]
    entries = list(csv.DictReader(io.StringIO(files["entries.csv"].decode())))
    assert "'" + FORMULA_ENTRY in [r["name"] for r in entries]
    for path, content in files.items():
        if path.endswith(".csv"):
            for row in csv.reader(io.StringIO(content.decode())):
                for value in row:
                    assert not value.startswith(("=", "+", "@")), (path, value)
                    assert not (value.startswith("-") and not re.fullmatch(r"-[\d.e+-]+", value)), (path, value)


# ------------------------------------------------------------------------------- import hygiene


def test_renderer_imports_no_plugin_and_no_torch():
    code = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from vlmbench.leaderboards import site, render, plots
from leaderboard_fixtures import fixture_site
files = render.render_site(fixture_site())
assert "index.html" in files
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "open_clip", "autoattack")
             or m.startswith(("vlmbench.registry", "vlmbench.defenses", "vlmbench.attacks", "vlmbench.runner", "vlmbench.plan", "vlmbench.execute", "vlmbench.cell", "vlmbench.batch", "vlmbench.world")))
print("BAD", bad)
assert not bad, bad
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------- site writer, build and CLI


def install_fake_data_layer(monkeypatch: pytest.MonkeyPatch, samples: bool = True) -> list:
    """Fake ``collect`` and ``boards`` modules returning the fixture Site; returns the call log."""
    import vlmbench.leaderboards as package

    calls: list = []
    collect_mod = types.ModuleType("vlmbench.leaderboards.collect")
    boards_mod = types.ModuleType("vlmbench.leaderboards.boards")

    def collect(sources, submissions):
        calls.append(("collect", list(sources), submissions))
        return "COLLECTION"

    def site_model(collection, standards):
        calls.append(("site_model", collection, standards))
        return fixture_site()

    collect_mod.collect = collect
    boards_mod.site_model = site_model
    boards_mod.load_standards = lambda: "STANDARDS"
    boards_mod.board_samples = lambda collection, site: fixture_samples() if samples else None
    for name, module in (("collect", collect_mod), ("boards", boards_mod)):
        monkeypatch.setitem(sys.modules, f"vlmbench.leaderboards.{name}", module)
        monkeypatch.setattr(package, name, module, raising=False)
    return calls


def test_build_writes_the_site_atomically_and_replaces_a_previous_one(tmp_path, monkeypatch):
    from vlmbench.leaderboards.site import MARKER, build

    calls = install_fake_data_layer(monkeypatch)
    out = tmp_path / "site"
    report = build([tmp_path / "results"], out, tmp_path / "subs")
    assert calls[0] == ("collect", [tmp_path / "results"], tmp_path / "subs") and calls[1] == ("site_model", "COLLECTION", "STANDARDS")
    assert (out / MARKER).is_file() and (out / "index.html").is_file() and (out / f"board/{WORLD_BOARD}.samples.csv").is_file()
    written = [p for p in out.rglob("*") if p.is_file()]
    assert report.files == len(written) and report.bytes == sum(p.stat().st_size for p in written)
    assert (report.boards, report.entries) == (2, 8)
    assert report.invalid == ["broken-submission: metadata.json: missing field 'method'",
                              "evil-invalid: results/x.parquet: not a vlmbench file <img src=x onerror=alert(4)>"]
    assert "2 boards, 8 entries (2 invalid)" in report.summary()
    (out / "stale.html").write_text("old")
    build([tmp_path / "results"], out)
    assert not (out / "stale.html").exists() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no staging or old folder left


def test_build_refuses_a_folder_that_is_not_a_site(tmp_path, monkeypatch):
    from vlmbench.leaderboards.site import build, write_site

    calls = install_fake_data_layer(monkeypatch)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(VlmbenchError, match="not a vlmbench site") as info:
        build([tmp_path], out)
    assert "\n" not in str(info.value) and calls == []  # refused before any work
    assert (out / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(VlmbenchError, match="not a folder"):
        build([tmp_path], tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_site({"index.html": b"x"}, empty)
    assert (empty / "index.html").read_bytes() == b"x"


def test_a_failed_write_leaves_the_previous_site(tmp_path):
    from vlmbench.leaderboards.site import write_site

    out = tmp_path / "site"
    write_site({"index.html": b"v1"}, out)
    with pytest.raises(VlmbenchError, match="outside the site folder"):
        write_site({"index.html": b"v2", "../escape.html": b"x"}, out)
    assert (out / "index.html").read_bytes() == b"v1" and not (tmp_path / "escape.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_cli_build_and_errors(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vlmbench.cli import app

    install_fake_data_layer(monkeypatch, samples=False)
    runner = CliRunner()
    out = tmp_path / "site"
    result = runner.invoke(app, ["leaderboard", "build", str(tmp_path / "results"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning: invalid entry broken-submission: metadata.json: missing field 'method'" in result.output
    assert "2 boards, 8 entries (2 invalid)" in result.output and (out / "index.html").is_file()
    assert not (out / f"board/{WORLD_BOARD}.samples.csv").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "a.txt").write_text("a")
    result = runner.invoke(app, ["leaderboard", "build", str(tmp_path / "results"), "--out", str(taken)])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["leaderboard", "serve", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a built site" in result.output


def test_an_empty_site_renders():
    from vlmbench.leaderboards.model import Site

    files = render_site(Site(boards=[], figures=[], cells=[], entries=[]))
    assert {"index.html", "flags.html", "about.html", "entries.csv", "entries.json", "site.json"} <= set(files)
    assert "No boards yet." in files["index.html"].decode()
