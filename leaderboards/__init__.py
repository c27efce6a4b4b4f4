"""The leaderboard site, installed as ``vlmbench.leaderboards``: static HTML built from results Parquet
files and submission metadata only (never from an imported plugin, never with torch).

Data flows one way: :mod:`.collect` (read and validate entries) → :mod:`.boards` (boards, rows,
statuses, ranks, intervals, as the plain data of :mod:`.model`) → :mod:`.render` (pure: site model →
files; :mod:`.plots` draws the SVGs) → :mod:`.site` (atomic write, local server). :mod:`.world` makes
and reproduces the committed world entry; ``publish.sh`` is what CI runs. See docs/leaderboards.md.
"""
