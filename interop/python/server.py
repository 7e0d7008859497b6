"""rsocket-py interop responder: serves the contract of docs/interop.md.

    python server.py --transport tcp|ws --host 127.0.0.1 --port 0 [--fragment MTU]

Prints `READY <transport> <host> <port>` once it accepts connections.

Leasing: a client that sets the L flag in SETUP is granted 2 requests for
30 s at once (the lease publisher below), and again on `lease-grant`. A
second listener without a lease publisher (its port is `noLeasePort` in
`caps`) refuses the L flag (rsocket-py answers UNSUPPORTED_SETUP).
"""

import asyncio
import json
import signal
import socket
import sys
from datetime import timedelta

from reactivestreams.publisher import Publisher
from reactivestreams.subscriber import Subscriber
from reactivestreams.subscription import Subscription
from rsocket.helpers import create_error_future, create_future
from rsocket.lease import DefinedLease
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_server import RSocketServer
from rsocket.transports.tcp import TransportTCP

from common import COMPOSITE, IMPL, ensure_bytes, parse_args, route_of


class AppError(RuntimeError):
    """Sent as ERROR[APPLICATION_ERROR] with the message as its data: rsocket-py
    maps any exception that is not an RSocketProtocolError that way."""


class ErrorPublisher(Publisher, Subscription):
    def __init__(self, message: str):
        self._message = message

    def subscribe(self, subscriber: Subscriber):
        subscriber.on_subscribe(self)
        subscriber.on_error(AppError(self._message))

    def request(self, n: int):
        pass

    def cancel(self):
        pass


class CreditPublisher(Publisher, Subscription):
    """Emits queued payloads only while the requester has granted credit.

    Emission runs in a task, one item per loop turn, so that a CANCEL
    arriving mid-stream stops it.
    """

    def __init__(self):
        self._subscriber = None
        self._credit = 0
        self._queue = []
        self._finished = False  # no more items will be queued
        self._done = False  # terminal signal sent or cancelled
        self._wakeup = asyncio.Event()
        self._task = None

    def subscribe(self, subscriber: Subscriber):
        self._subscriber = subscriber
        subscriber.on_subscribe(self)
        self._task = asyncio.get_event_loop().create_task(self._run())

    def push(self, payload: Payload):
        self._queue.append(payload)
        self._wakeup.set()

    def finish(self):
        self._finished = True
        self._wakeup.set()

    def request(self, n: int):
        self._credit += n
        self._wakeup.set()

    def cancel(self):
        self._done = True
        self._wakeup.set()

    async def _run(self):
        while not self._done:
            if self._queue and self._credit > 0:
                self._credit -= 1
                self._subscriber.on_next(self._queue.pop(0))
                await asyncio.sleep(0)
            elif self._finished and not self._queue:
                self._done = True
                self._subscriber.on_complete()
            else:
                self._wakeup.clear()
                await self._wakeup.wait()


class CountingPublisher(CreditPublisher):
    """`0` .. `n-1`, produced lazily as credit arrives; reports how far it
    got for the `produced` query."""

    def __init__(self, n: int):
        super().__init__()
        self._n = n
        self._next = 0
        self._finished = n == 0
        self.state = 'running'

    def produced(self) -> int:
        return self._next

    def cancel(self):
        if self.state == 'running':
            self.state = 'cancelled'
        super().cancel()

    async def _run(self):
        while not self._done:
            if self._next < self._n and self._credit > 0:
                self._credit -= 1
                self._queue.append(Payload(str(self._next).encode()))
                self._next += 1
                self._finished = self._next == self._n
            if self._queue:
                self._subscriber.on_next(self._queue.pop(0))
                await asyncio.sleep(0)
            elif self._finished:
                self._done = True
                self.state = 'completed'
                self._subscriber.on_complete()
            else:
                self._wakeup.clear()
                await self._wakeup.wait()


class ChannelInbound(Subscriber):
    """Receives the requester's payloads and queues them upper-cased."""

    def __init__(self, outbound: CreditPublisher):
        self._outbound = outbound
        self.subscription = None

    def on_subscribe(self, subscription):
        self.subscription = subscription
        # Credit for the requester's payloads after the first.
        subscription.request(2 ** 31 - 1)

    def on_next(self, value, is_complete=False):
        self._outbound.push(Payload(ensure_bytes(value.data).upper()))
        if is_complete:
            self._outbound.finish()

    def on_error(self, exception):
        self._outbound.finish()

    def on_complete(self):
        self._outbound.finish()


class GrantPublisher(Publisher):
    """The lease publisher of every connection: rsocket-py subscribes once
    per connection whose SETUP carries the L flag. Each subscriber gets 2
    requests for 30 s at once, and again on `grant_all`. (Whole seconds:
    rsocket-py doubles sub-second TTLs when it writes them.)"""

    def __init__(self):
        self.subscribers = []

    @staticmethod
    def lease():
        return DefinedLease(maximum_request_count=2,
                            maximum_lease_time=timedelta(seconds=30))

    def subscribe(self, subscriber: Subscriber):
        self.subscribers.append(subscriber)
        subscriber.on_next(self.lease())

    def grant_all(self) -> int:
        for subscriber in self.subscribers:
            subscriber.on_next(self.lease())
        return len(self.subscribers)


GRANTS = GrantPublisher()
NO_LEASE_PORT = [0]


class Handler(BaseRequestHandler):
    """One per connection (rsocket-py builds a handler per RSocketServer)."""

    def __init__(self, fragmentation: bool):
        self.requests = 0
        self.fragmentation = fragmentation
        self.routing = False
        self.fnf_count = 0
        self.mp_count = 0
        self.mp_last = b''
        self.last_stream = None

    async def on_setup(self, data_encoding, metadata_encoding, payload):
        self.routing = ensure_bytes(metadata_encoding) == COMPOSITE

    def _check_route(self, payload: Payload, expected: str):
        if not self.routing:
            return None
        route = route_of(ensure_bytes(payload.metadata))
        if route is not None and route != expected:
            return 'unknown route: %s' % route
        return None

    def _caps(self) -> bytes:
        return json.dumps({
            'impl': IMPL,
            'fragmentation': True,
            'metadataPush': True,
            'lease': True,
            'resume': False,
            'routing': True,
            'noLeasePort': NO_LEASE_PORT[0],
        }).encode()

    async def request_response(self, payload: Payload):
        error = self._check_route(payload, 'echo')
        if error is not None:
            return create_error_future(AppError(error))
        data = ensure_bytes(payload.data)
        seen_before = self.requests
        self.requests += 1
        if data == b'lease-grant':
            return create_future(Payload(b'granted:%d' % GRANTS.grant_all()))
        if data == b'lease-stats':
            # rsocket-py never rejects for lease (its requesters queue).
            answer = {'requests': seen_before, 'rejected': 0}
            return create_future(Payload(json.dumps(answer).encode()))
        if data == b'fnf-count':
            return create_future(Payload(str(self.fnf_count).encode()))
        if data == b'mp-count':
            return create_future(Payload(str(self.mp_count).encode()))
        if data == b'mp-last':
            return create_future(Payload(b'mp:' + self.mp_last))
        if data == b'caps':
            return create_future(Payload(self._caps()))
        if data == b'produced':
            last = self.last_stream
            answer = {'produced': 0, 'state': 'none'} if last is None else \
                {'produced': last.produced(), 'state': last.state}
            return create_future(Payload(json.dumps(answer).encode()))
        if data == b'fail':
            return create_error_future(AppError('requested failure'))
        metadata = payload.metadata if payload.metadata else None
        return create_future(Payload(b'echo:' + data, metadata))

    async def request_fire_and_forget(self, payload: Payload):
        self.requests += 1
        self.fnf_count += 1

    async def on_metadata_push(self, payload: Payload):
        self.mp_count += 1
        self.mp_last = ensure_bytes(payload.metadata)

    async def request_stream(self, payload: Payload):
        self.requests += 1
        error = self._check_route(payload, 'stream')
        if error is not None:
            return ErrorPublisher(error)
        text = ensure_bytes(payload.data).decode('utf-8', 'replace').strip()
        try:
            n = int(text)
        except ValueError:
            n = -1
        if n < 0:
            return ErrorPublisher('bad n')
        self.last_stream = CountingPublisher(n)
        return self.last_stream

    async def request_channel(self, payload: Payload):
        self.requests += 1
        error = self._check_route(payload, 'channel')
        if error is not None:
            return ErrorPublisher(error), None
        outbound = CreditPublisher()
        outbound.push(Payload(ensure_bytes(payload.data).upper()))
        return outbound, ChannelInbound(outbound)


async def main():
    args = parse_args('rsocket-py interop server', client=False)
    fragment = args.fragment
    connections = set()

    def handler_factory():
        return Handler(fragmentation=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # The main listener leases to clients that ask; the second one has no
    # lease publisher, so it refuses them.
    if args.transport == 'tcp':
        def on_connection_factory(lease_publisher):
            async def on_connection(reader, writer):
                server = RSocketServer(TransportTCP(reader, writer),
                                       handler_factory=handler_factory,
                                       fragment_size_bytes=fragment,
                                       lease_publisher=lease_publisher)
                connections.add(server)
            return on_connection

        no_lease = await asyncio.start_server(on_connection_factory(None), args.host, 0)
        NO_LEASE_PORT[0] = no_lease.sockets[0].getsockname()[1]
        listener = await asyncio.start_server(on_connection_factory(GRANTS),
                                              args.host, args.port)
        port = listener.sockets[0].getsockname()[1]
    else:
        from aiohttp import web
        from rsocket.transports.aiohttp_websocket import websocket_handler_factory

        async def serve_ws(port_wanted, lease_publisher):
            app = web.Application()
            app.add_routes([web.get('/', websocket_handler_factory(
                handler_factory=handler_factory,
                fragment_size_bytes=fragment,
                lease_publisher=lease_publisher,
                on_server_create=connections.add))])
            runner = web.AppRunner(app)
            await runner.setup()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((args.host, port_wanted))
            site = web.SockSite(runner, sock)
            await site.start()
            return sock.getsockname()[1]

        NO_LEASE_PORT[0] = await serve_ws(0, None)
        port = await serve_ws(args.port, GRANTS)

    print('READY %s %s %d' % (args.transport, args.host, port), flush=True)
    await stop.wait()
    sys.exit(0)


if __name__ == '__main__':
    asyncio.run(main())
