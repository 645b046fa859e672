"""`python -m dynavatar.config`: print every conf key with its default and what it means."""

from .defaults import defaults_text

print(defaults_text(), end="")
