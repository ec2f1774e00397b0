"""tuneforge's built-in plugins.

Each module here is registered through the ``tuneforge`` entry-point group in
``pyproject.toml``, exactly like a third-party plugin, and uses only the public
``tuneforge`` API.
"""
