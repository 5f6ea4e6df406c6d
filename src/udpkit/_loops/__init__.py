"""The loops that own a socket and the clock: engine, servers, relay, bench, reflector, recorder."""
