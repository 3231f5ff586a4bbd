"""Test support: servers that reproduce real pages on 127.0.0.1, tiny models built offline."""
