"""Key/value caches: the interface (base.py), one file per kind, the registry above them (registry.py), the
ragged batch layout and the paged block table."""
