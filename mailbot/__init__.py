"""mailbot: an email-to-ticket daemon that keeps a support team's promise."""

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it (tool.setuptools.dynamic)
