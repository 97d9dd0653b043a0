"""Prints a loopback port free at the time of the call, for a server a script starts next.

It comes from outside the kernel's ephemeral range: a port from inside it, once released, may
go to any socket's bind(0) or connect() before the server binds it (the same choice as the
tests' free_port in e2e/src/ports.rs).
"""

import random
import socket
import sys

with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    low, high = (int(w) for w in f.read().split())
below, above = range(10000, low), range(high + 1, 65536)
ports = below if len(below) >= len(above) else above
for port in random.sample(ports, min(len(ports), 1000)):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    sys.exit(0)
sys.exit("free-port.py: no free port outside the ephemeral range")
