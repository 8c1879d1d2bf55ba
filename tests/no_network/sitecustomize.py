"""Imported by every Python process started with this folder on PYTHONPATH (tests only): a
connection or name lookup beyond this machine is refused and written to the file that
LMEXP_TEST_CONNECTIONS names, so a test can assert that a run never tried to reach a service."""

import os
import socket

_LOCAL = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "")


def _refuse(what: str) -> None:
    path = os.environ.get("LMEXP_TEST_CONNECTIONS")
    if path:
        with open(path, "a") as f:
            f.write(what + "\n")
    raise OSError(f"the test allows no network: {what}")


_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo


def _guarded_connect(self, address):
    if isinstance(address, tuple) and address[0] not in _LOCAL:
        _refuse(f"connect {address}")
    return _connect(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL and host is not None:
        _refuse(f"getaddrinfo {host}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.getaddrinfo = _guarded_getaddrinfo
