"""The asyncio glue behind :mod:`udpkit.aio`."""
