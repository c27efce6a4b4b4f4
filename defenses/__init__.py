"""Built-in defenses, installed as ``vlmbench.defenses`` and registered through the
``vlmbench.defenses`` entry-point group (the same path a third-party defense takes)."""
