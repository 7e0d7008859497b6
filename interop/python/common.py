"""Shared helpers for the rsocket-py interop peers (server.py, client.py)."""

import argparse
import asyncio
from importlib.metadata import version

from rsocket.extensions.composite_metadata import CompositeMetadata
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.extensions.routing import RoutingMetadata

COMPOSITE = WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA.value.name
OCTET_STREAM = b'application/octet-stream'
IMPL = 'rsocket-py %s' % version('rsocket')


def parse_args(description: str, client: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--transport', choices=['tcp', 'ws'], default='tcp')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=0)
    if client:
        parser.add_argument('--case-timeout', type=float, default=10.0)
    else:
        parser.add_argument('--fragment', type=int, default=None,
                            help='fragment replies to this MTU (bytes)')
    return parser.parse_args()


def route_of(metadata: bytes):
    """The first routing tag of composite metadata, or None when it holds no
    routing entry (or is not composite metadata at all)."""
    if not metadata:
        return None
    try:
        composite = CompositeMetadata().parse(metadata)
    except Exception:  # not composite metadata: no route
        return None
    for item in composite.items:
        if isinstance(item, RoutingMetadata):
            return item.tags[0].decode() if item.tags else ''
    return None


def ensure_bytes(value) -> bytes:
    if value is None:
        return b''
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


async def wait_for(awaitable, timeout: float):
    return await asyncio.wait_for(awaitable, timeout)
