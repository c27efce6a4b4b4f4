"""Leaderboard rendering (static HTML from results Parquet), installed as ``vlmbench.leaderboards``.

Planned for the leaderboard capability (ROADMAP item 7); the results schema it will read is in
``docs/results-schema.md``.
"""
