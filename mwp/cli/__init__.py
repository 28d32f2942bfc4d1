"""The console scripts: `mwp` (run), `mwp-config` (inspect and check a config), `mwp-cache` (the stage cache).

They sit on top of everything else: each composes or reads what the layers below provide and
prints one line per user error.
"""
