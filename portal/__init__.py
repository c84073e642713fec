"""Portal: one URL in front of many MCP servers, with one login, policies and an audit log."""

__version__ = "0.1.0"

__all__ = ["__version__"]
