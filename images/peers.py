"""Loopback peers for images/run-checks.sh (standard library only).

hello: a TCP listener that reads each connection's TLS ClientHello, appends
       {"tls": bool, "sni": name-or-null} as a JSON line to --log, and closes. It shows that
       a binary in the image resolved a name and started a TLS handshake to it.
dns:   a UDP DNS responder: A records for the --name NAME=IP pairs, an empty answer for other
       types of those names, NXDOMAIN for anything else. Each query is logged to --log.
Both write --ready once listening.
"""

import argparse
import json
import socket
import struct
import threading


def client_hello_sni(data):
    """(is a TLS ClientHello, server name or None)."""
    # Record header: type 22 (handshake), version, length; handshake type 1 (ClientHello).
    if len(data) < 9 or data[0] != 22 or data[5] != 1:
        return False, None
    pos = 9 + 2 + 32  # handshake header, client version, random
    try:
        pos += 1 + data[pos]  # session id
        pos += 2 + struct.unpack_from(">H", data, pos)[0]  # cipher suites
        pos += 1 + data[pos]  # compression methods
        end = pos + 2 + struct.unpack_from(">H", data, pos)[0]
        pos += 2
        while pos + 4 <= end:
            kind, size = struct.unpack_from(">HH", data, pos)
            pos += 4
            if kind == 0:  # server_name: list length, type 0 (host_name), name length, name
                length = struct.unpack_from(">H", data, pos + 3)[0]
                return True, data[pos + 5 : pos + 5 + length].decode("ascii")
            pos += size
    except (IndexError, struct.error):
        pass
    return True, None


def hello(args):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((args.addr, args.port))
    server.listen(16)
    ready(args.ready)
    lock = threading.Lock()

    def serve(conn):
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while len(data) < 16384:
                    chunk = conn.recv(16384)
                    if not chunk:
                        break
                    data += chunk
                    is_tls, sni = client_hello_sni(data)
                    record_len = struct.unpack_from(">H", data, 3)[0] if len(data) >= 5 else 0
                    if not is_tls or len(data) >= 5 + record_len:
                        break
            except OSError:
                pass
            is_tls, sni = client_hello_sni(data)
            with lock, open(args.log, "a", encoding="utf-8") as log:
                log.write(json.dumps({"tls": is_tls, "sni": sni}) + "\n")

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def dns(args):
    names = {}
    for pair in args.name:
        name, ip = pair.split("=", 1)
        names[name.lower().rstrip(".")] = socket.inet_aton(ip)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((args.addr, args.port))
    ready(args.ready)
    while True:
        query, peer = server.recvfrom(512)
        if len(query) < 17:
            continue
        ident, _flags, qdcount = struct.unpack_from(">HHH", query)
        pos, labels = 12, []
        while pos < len(query) and query[pos]:
            labels.append(query[pos + 1 : pos + 1 + query[pos]].decode("ascii", "replace"))
            pos += 1 + query[pos]
        question = query[12 : pos + 5]
        qtype = struct.unpack_from(">H", query, pos + 1)[0]
        name = ".".join(labels).lower()
        answers = b""
        if name in names and qtype == 1:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + names[name]
        rcode = 0 if name in names else 3
        header = struct.pack(">HHHHHH", ident, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
        server.sendto(header + question + answers, peer)
        with open(args.log, "a", encoding="utf-8") as log:
            log.write(json.dumps({"name": name, "qtype": qtype, "answered": bool(answers)}) + "\n")


def ready(path):
    with open(path, "w", encoding="utf-8") as f:
        f.write("ready\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("hello", "dns"):
        p = sub.add_parser(command)
        p.add_argument("--addr", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--log", required=True)
        p.add_argument("--ready", required=True)
        if command == "dns":
            p.add_argument("--name", action="append", default=[], help="NAME=IPv4")
    args = parser.parse_args()
    {"hello": hello, "dns": dns}[args.command](args)


if __name__ == "__main__":
    main()
