"""Engines: the interface (base.py), the one decode loop (generate.py), one file per engine, the registry."""
