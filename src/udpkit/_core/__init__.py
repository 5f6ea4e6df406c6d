"""The I/O-free core: no socket, no clock read, no /proc; every timed call takes ``now``."""
