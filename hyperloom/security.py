"""CURVE authentication and encryption for every hyperloom connection.

A *secret file* holds one CURVE key pair shared by the broker, the workers
and the clients of a cluster (``loom-keygen PATH`` writes one, mode 0600).
The broker's ROUTER and each worker's data PULL socket are CURVE servers; a
ZAP handler admits only peers presenting the cluster's public key, so a
party without the file can neither connect nor read the traffic. Refused
handshakes are logged by the side that refuses them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import zmq
from zmq.auth.thread import ThreadAuthenticator

ZAP_DOMAIN = "hyperloom"


@dataclass(frozen=True)
class ClusterKeys:
    public: bytes
    secret: bytes


def generate_secret_file(path: str) -> ClusterKeys:
    public, secret = zmq.curve_keypair()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write("# hyperloom cluster key: keep it secret, give it to every broker, worker "
                "and client\n")
        f.write(f"public = {public.decode()}\nsecret = {secret.decode()}\n")
    return ClusterKeys(public, secret)


def load_secret_file(path: str) -> ClusterKeys:
    values = {}
    with open(path) as f:
        for line in f:
            if "=" in line and not line.lstrip().startswith("#"):
                name, value = line.split("=", 1)
                values[name.strip()] = value.strip().encode()
    try:
        keys = ClusterKeys(values["public"], values["secret"])
    except KeyError:
        raise ValueError(f"{path} is not a hyperloom secret file (run loom-keygen)") from None
    if len(keys.public) != 40 or len(keys.secret) != 40:
        raise ValueError(f"{path}: keys must be 40-character Z85 CURVE keys")
    return keys


def secure_server(socket: zmq.Socket, keys: ClusterKeys):
    socket.curve_server = True
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret
    socket.zap_domain = ZAP_DOMAIN.encode()


def secure_client(socket: zmq.Socket, keys: ClusterKeys):
    socket.curve_serverkey = keys.public
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret


class _ClusterKeyOnly:
    def __init__(self, keys: ClusterKeys, log: logging.Logger):
        self.keys = keys
        self.log = log

    def callback(self, domain, key):
        if key == self.keys.public:
            return True
        self.log.warning("refused a connection presenting an unknown CURVE key")
        return False


def start_authenticator(context: zmq.Context, keys: ClusterKeys, log: logging.Logger):
    """A ZAP handler thread admitting only the cluster key; ``.stop()`` it on close."""
    authenticator = ThreadAuthenticator(context, log=logging.getLogger("hyperloom.zap"))
    authenticator.start()
    authenticator.configure_curve_callback(domain=ZAP_DOMAIN,
                                           credentials_provider=_ClusterKeyOnly(keys, log))
    return authenticator


HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def keygen_main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(
        prog="loom-keygen",
        description="Write a new cluster secret file for --secret-file (CURVE keys, mode 0600).")
    parser.add_argument("path", help="file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if os.path.exists(args.path) and not args.force:
        parser.error(f"{args.path} exists (use --force to overwrite)")
    generate_secret_file(args.path)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":   # python -m hyperloom.security PATH, as loom-keygen
    raise SystemExit(keygen_main())
