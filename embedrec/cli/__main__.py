"""``python -m embedrec.cli``: the same as the ``embedrec`` command."""

from embedrec.cli import main

main()
