"""The broker connection of the command-line clients (``explaincam request``, ``explaincam history``):
their arguments, the defaults they take from the daemon's config, and the connect.

A client names the broker, camera and prefix with ``-c config.yaml`` (default ``./config.yaml``
when it exists) or with ``--host``, ``--port``, ``--camera``, ``--prefix``; user, password file
and TLS as the daemon's own connection takes them.
"""

from __future__ import annotations

import argparse
import os

import paho.mqtt.client as paho

from daemon.config import CONFIG_FILE, AppConfig
from daemon.config_file import load_config


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """``-c``, ``--host``, ``--port``, ``--camera``, ``--prefix``, ``--username``, ``--password-file``,
    ``--ca-certs`` and ``--tls``."""
    parser.add_argument("-c", "--config", default=None,
                        help="the daemon's config.yaml, for the broker, camera and prefix defaults "
                             f"(default: {CONFIG_FILE} if it exists)")
    parser.add_argument("--host", default=None, help="MQTT broker host (default: the config's, else localhost)")
    parser.add_argument("--port", type=int, default=None,
                        help="broker port (default: the config's, else 1883, 8883 with TLS)")
    parser.add_argument("--camera", default=None, help="camera name, the {camera} topic level "
                                                       "(default: the config's, else cam)")
    parser.add_argument("--prefix", default=None, help="topic prefix (default: the config's, else explaincam)")
    parser.add_argument("--username", default=None, help="MQTT user name")
    parser.add_argument("--password-file", default=None, help="file holding the MQTT password")
    parser.add_argument("--ca-certs", default=None, help="CA certificate of the broker (turns TLS on)")
    parser.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")


def apply_config_defaults(args: argparse.Namespace) -> None:
    """Fill --host, --port, --camera and --prefix left out from the config (``-c``, else ./config.yaml if it
    exists), else localhost, cam, explaincam; ConfigError when a config named with ``-c`` cannot be used."""
    path = args.config or (CONFIG_FILE if os.path.isfile(CONFIG_FILE) else None)
    cfg = load_config(path) if path else AppConfig()
    args.host = args.host or cfg.mqtt.host
    args.port = args.port or (cfg.mqtt.port if path else None)
    args.camera = args.camera or cfg.camera.name
    args.prefix = args.prefix or cfg.mqtt.topic_prefix


def connect(client: paho.Client, args: argparse.Namespace) -> int:
    """Connect ``client`` as the command line says (user, password file, TLS, host, port) and start its
    network thread; the port used. ConnectionError when the broker cannot be reached."""
    if args.username:
        password = None
        if args.password_file:
            with open(args.password_file) as fh:
                password = fh.read().strip()
        client.username_pw_set(args.username, password)
    if args.ca_certs or args.tls:
        client.tls_set(ca_certs=args.ca_certs)
    port = args.port or (8883 if (args.ca_certs or args.tls) else 1883)
    try:
        client.connect(args.host, port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"cannot connect to {args.host}:{port}: {exc}") from None
    client.loop_start()
    return port
