"""A pre-forked HTTP responder for config/sockets.yaml.

It never binds: superd owns the listening socket and hands it over as fd 3
(systemd's LISTEN_FDS convention), so every instance accepts on the same
socket and a restart never refuses a connection.  It reports readiness with
an sd_notify datagram, the way `systemd-notify --ready` would.
"""

import os
import socket


def notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)


def main() -> None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        raise SystemExit("expected one socket from superd on fd 3 (LISTEN_FDS)")
    server = socket.socket(fileno=3)
    name = os.environ.get("SUPERD_NAME", "?")
    notify(f"READY=1\nSTATUS=accepting on {os.environ['LISTEN_FDNAMES']}")
    while True:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            body = f"hello from {name} (pid {os.getpid()})\n".encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


if __name__ == "__main__":
    main()
