"""``python -m udpkit``: the same as the ``udpkit`` command."""

from ._cli import run

run()
