"""The textbook server: ``recvfrom`` in a loop, ``sendto`` to answer (one syscall each)."""

from __future__ import annotations

import signal

import _common


class _Stop(Exception):
    pass


def _raise_stop(*_: object) -> None:
    raise _Stop


def main() -> None:
    args = _common.parse(__doc__ or "")
    s = _common.bound_socket(args)
    signal.signal(signal.SIGTERM, _raise_stop)
    if args.duration is not None:
        signal.signal(signal.SIGALRM, _raise_stop)
        signal.setitimer(signal.ITIMER_REAL, args.duration)
    received = 0
    _common.ready(s)
    try:
        if args.mode == "sink":
            while True:
                data, addr = s.recvfrom(65535)
                received += 1
        else:
            while True:
                data, addr = s.recvfrom(65535)
                received += 1
                s.sendto(data, addr)
    except _Stop:
        pass
    _common.result(received=received)
    s.close()


if __name__ == "__main__":
    main()
