"""The rendered leaderboard site in a real headless Chromium (Playwright driving Debian's
``chromium``), over ``file://`` and over a local HTTP server: rows listed, sorting, filters, every
internal link, plots, hostile names, no console or page error, and the tables with JavaScript off.

Skipped when Playwright or Chromium is missing, except when ``CI`` is set or
``VLMBENCH_REQUIRE_BROWSER=1`` (then it fails). The browser fixtures are in ``browser_support.py``.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections import deque
from pathlib import Path
from urllib.parse import urldefrag, urlsplit
from urllib.request import url2pathname

import pytest

from leaderboard_fixtures import FORMULA_ENTRY, JS_URL, TECOA_BOARD, WORLD_BOARD, XSS_DEFENSE, fixture_samples, fixture_site
from vlmbench.leaderboards.render import render_site
from vlmbench.leaderboards.site import write_site

from browser_support import Watched, browser, watched  # noqa: F401 - fixtures

@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("leaderboard") / "site"
    write_site(render_site(fixture_site(), fixture_samples()), out)
    return out


class _SilentHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def http_root(site_dir: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_SilentHandler, directory=str(site_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["file", "http"])
def root(request, site_dir: Path) -> str:
    if request.param == "file":
        return site_dir.as_uri() + "/"
    return request.getfixturevalue("http_root")


def column(page, table: str, index: int, visible_only: bool = True) -> list[str]:
    """The text of one column (0-based) of ``table``'s body rows, in display order."""
    return page.eval_on_selector(
        table,
        """(t, [i, vis]) => Array.from(t.tBodies[0].rows).filter(r => !vis || !r.hidden)
              .map(r => r.cells[i].textContent.trim())""",
        [index, visible_only],
    )


def header_index(page, table: str, text: str) -> int:
    return page.eval_on_selector(table, "(t, s) => Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.trim() === s)", text)


def test_every_row_and_entry_is_listed(root, watched):
    site = fixture_site()
    w = watched()
    page = w.goto(root + "index.html")
    entries = column(page, "#entries-table", 0)
    assert entries == [e.name for e in site.entries]
    for board in site.boards:
        assert column(page, f"#index-{board.id}", 2) == [r.defense for r in board.rows]
        board_page = w.goto(root + f"board/{board.id}.html")
        assert column(board_page, "#board-table", 2) == [r.defense for r in board.rows]
        assert column(board_page, "#board-table", 0) == [str(r.rank) if r.rank is not None else "—" for r in board.rows]
        page = w.goto(root + "index.html")


def test_clicking_a_header_sorts_the_rows(root, watched):
    page = watched().goto(root + f"board/{WORLD_BOARD}.html")
    table = "#board-table"
    clean = header_index(page, table, "clean %")
    head = page.locator(f"{table} thead th").nth(clean)
    head.click()
    assert head.get_attribute("aria-sort") == "descending"
    values = [float(v.split()[0]) for v in column(page, table, clean)]
    assert values == sorted(values, reverse=True) == [80.0, 76.3, 71.0, 68.4, 64.5]
    head.click()
    assert head.get_attribute("aria-sort") == "ascending"
    assert [float(v.split()[0]) for v in column(page, table, clean)] == [64.5, 68.4, 71.0, 76.3, 80.0]
    aa = header_index(page, table, "aa %")
    page.locator(f"{table} thead th").nth(aa).click()
    assert head.get_attribute("aria-sort") == "none"
    assert [v.split()[0] for v in column(page, table, aa)] == ["70.5", "44.9", "42.0", "25.0", "—"]  # missing last
    defense = header_index(page, table, "defense")
    page.locator(f"{table} thead th").nth(defense).press("Enter")  # keyboard works too
    assert column(page, table, defense) == sorted(column(page, table, defense), key=str.lower)
    rank = page.locator(f"{table} thead th").nth(0)
    rank.click()
    assert rank.get_attribute("aria-sort") == "ascending" and column(page, table, 0) == ["1", "2", "3", "—", "—"]


def test_filters_hide_rows(root, watched):
    page = watched().goto(root + f"board/{WORLD_BOARD}.html")
    table = "#board-table"
    controls = page.locator('.controls[data-for="board-table"]')
    assert controls.is_visible()
    assert controls.locator("output").text_content() == "5 of 5 rows shown"
    page.fill('[data-filter="text"]', "world-rn")
    assert column(page, table, 2) == ["ttc", "tecoa"]
    assert controls.locator("output").text_content() == "2 of 5 rows shown"
    page.fill('[data-filter="text"]', "")
    page.select_option('select[data-filter="model"]', "world-vit")
    assert column(page, table, 2) == ["none", "scc", XSS_DEFENSE]
    page.select_option('select[data-filter="kind"]', "test-time")
    assert column(page, table, 2) == ["scc"]
    page.select_option('select[data-filter="model"]', "")
    assert column(page, table, 2) == ["ttc", "scc"]
    page.select_option('select[data-filter="kind"]', "")
    page.select_option('select[data-filter="state"]', "flag:zero-gradients")
    assert column(page, table, 2) == [XSS_DEFENSE]
    page.select_option('select[data-filter="state"]', "status:incomplete")
    assert column(page, table, 2) == ["scc"]
    page.select_option('select[data-filter="state"]', "")
    page.check('[data-filter="ranked"]')
    assert column(page, table, 0) == ["1", "2", "3"]
    assert page.locator(f"{table} tbody tr.unranked").first.is_hidden()
    page.uncheck('[data-filter="ranked"]')
    assert len(column(page, table, 0)) == 5


def test_every_internal_link_resolves_and_no_page_errs(root, watched, site_dir):
    """Crawl from index.html: every page loads without console/page errors or dialogs, every internal
    href points at an existing file (and its #anchor at an element), every plot has a size."""
    w = watched()
    page = w.page
    seen: set[str] = set()
    anchors: dict[str, set[str]] = {}
    links: list[tuple[str, str]] = []
    queue = deque([root + "index.html"])
    plots = 0
    while queue:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        w.goto(url)
        anchors[url] = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
        for box in (svg.bounding_box() for svg in page.locator("svg.plot").all()):
            assert box and box["width"] > 50 and box["height"] > 50, url
            plots += 1
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            if not href.startswith(root):
                assert href.startswith(("https://", "http://")) and not href.startswith("http://127.0.0.1"), (url, href)
                continue
            target, fragment = urldefrag(href)
            links.append((url, href))
            if target.endswith(".html") and target not in seen:
                queue.append(target)
    assert len(seen) >= 19 and plots >= 8, (len(seen), plots)
    for url, href in links:
        target, fragment = urldefrag(href)
        if target.endswith(".html"):
            assert target in anchors, (url, href)
            if fragment:
                assert fragment in anchors[target], (url, href)
        elif root.startswith("file:"):
            assert Path(url2pathname(urlsplit(target).path)).is_file(), (url, href)
        else:
            response = page.request.get(target)
            assert response.ok, (url, href)
    expected = {p.relative_to(site_dir).as_posix() for p in site_dir.rglob("*.html")}
    assert {u[len(root):] for u in seen} == expected  # every page is reachable


def test_plots_render_with_size(root, watched):
    w = watched()
    for path, count in ((f"board/{WORLD_BOARD}.html", 1), (f"board/{TECOA_BOARD}.html", 1), ("defense/ttc.html", 2), ("defense/tecoa.html", 1)):
        page = w.goto(root + path)
        svgs = page.locator("svg.plot")
        assert svgs.count() == count, path
        for i in range(count):
            box = svgs.nth(i).bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, path
            assert svgs.nth(i).locator("title").count() == 1
            assert svgs.nth(i).locator("text").count() > 5  # axis labels drawn as text


def test_hostile_names_show_as_text(root, watched):
    w = watched()
    page = w.goto(root + f"board/{WORLD_BOARD}.html")
    cell = page.locator("#board-table tbody tr").nth(4).locator("td").nth(2)
    assert cell.text_content().strip() == XSS_DEFENSE and cell.locator("script").count() == 0
    assert page.locator("svg.plot text", has_text=XSS_DEFENSE).count() == 1  # escaped in the SVG, drawn as text
    assert page.eval_on_selector_all("a", "els => els.filter(a => /^\\s*javascript:/i.test(a.getAttribute('href') || '')).length") == 0
    assert page.get_by_text("paper: " + JS_URL).count() == 1  # the javascript: URL is text
    assert page.locator("script").count() == 1
    index = w.goto(root + "index.html")
    assert index.locator("#entries-table td", has_text=FORMULA_ENTRY).count() == 1
    assert index.locator("img").count() == 0  # the invalid entry's <img onerror> is text
    assert w.problems == []


def test_tables_without_javascript(root, watched):
    w = watched(javascript=False)
    page = w.goto(root + f"board/{WORLD_BOARD}.html")
    assert page.locator('.controls[data-for="board-table"]').is_hidden()
    assert column(page, "#board-table", 0) == ["1", "2", "3", "—", "—"]
    assert page.locator("#board-table tbody tr").count() == 5 and page.locator("#board-table tbody tr").nth(0).is_visible()
    assert page.locator("#board-table thead th").nth(0).get_attribute("aria-sort") is None
    index = w.goto(root + "index.html")
    assert index.locator(f"#index-{WORLD_BOARD} tbody tr").count() == 5
