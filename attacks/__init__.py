"""Built-in attacks, installed as ``vlmbench.attacks`` and registered through the ``vlmbench.attacks``
entry-point group (the same path a third-party attack takes)."""
