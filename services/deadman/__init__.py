"""The deadman: pages on per-node silence, on its own clock (see tracker.py for the rules)."""
