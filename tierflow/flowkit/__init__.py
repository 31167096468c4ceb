"""What a flow is built from where the call path (core) and the vault meet: the run's folders and templates
(`folder`), and the checks that judge answers against notes (`checks`).

Core and vault never import each other (tests/test_layers.py): whatever needs both lives here, above them, and
is passed down (a `Check` into `Caller.ask(checks=...)`, a vault path and config values into the vault readers).
"""
