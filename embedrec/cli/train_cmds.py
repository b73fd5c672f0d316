"""Placeholder: commands land here."""
from embedrec.cli.common import app  # noqa: F401
