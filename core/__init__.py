"""autoresearch loop engine: no UI imports."""
