"""Started with every Python process of the test suite (this folder is on PYTHONPATH)."""

import loopback_guard

loopback_guard.install()
