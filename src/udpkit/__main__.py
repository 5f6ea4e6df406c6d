"""``python -m udpkit``: the same as the ``udpkit`` command."""

from udpkit._cli.main import run

run()
