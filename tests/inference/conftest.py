"""Fixtures of the inference tests (helpers live in `_tiny.py`, shared with the CLI tests)."""

from tests.inference._tiny import vidseg_cache  # noqa: F401  (pytest fixture)
