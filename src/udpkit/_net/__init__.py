"""The OS layer: addresses, sockets, multicast, the recvmmsg/sendmmsg bindings and kernel facts."""
