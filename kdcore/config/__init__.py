"""What a spec says: the TOML file's models (pydantic, every table strict), loading it in one pass
with every problem reported, and the figures derived from it."""
