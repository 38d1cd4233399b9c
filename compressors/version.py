"""The project's version, in one place (pyproject.toml, the API and reports read it here)."""

__version__ = "0.1.0"
