"""The ``udpkit`` command line: argument parsing and printing over the library."""
