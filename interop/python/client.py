"""rsocket-py interop conformance client for servers of the docs/interop.md
contract.

    python client.py --transport tcp|ws --host 127.0.0.1 --port P

Prints `PASS name`, `FAIL name: reason` or `SKIP name: reason` per case, then
`K skipped` and a last line `N passed, M failed`; exits 1 on any failure.
"""

import asyncio
import json
import os
import sys

from reactivestreams.publisher import Publisher
from reactivestreams.subscriber import Subscriber
from reactivestreams.subscription import Subscription
from rsocket.error_codes import ErrorCode
from rsocket.exceptions import RSocketProtocolError
from rsocket.extensions.helpers import composite, route
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.helpers import single_transport_provider
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_client import RSocketClient
from rsocket.transports.tcp import TransportTCP

from common import IMPL, OCTET_STREAM, ensure_bytes, parse_args

# After a batch was delivered, how long to watch for items beyond the credit
# granted. Over-delivery follows the batch directly; this orders nothing.
QUIET = 0.15


class Skip(Exception):
    pass


class Fail(Exception):
    pass


def expect_eq(what, got, want):
    if got != want:
        raise Fail('%s: got %r, want %r' % (what, got, want))


def expect_app_error(exc, message):
    # rsocket-py turns ERROR[APPLICATION_ERROR] into a RuntimeError carrying
    # the message, and every other code into RSocketProtocolError.
    if exc is None:
        raise Fail('expected APPLICATION_ERROR %r, got success' % message)
    if isinstance(exc, RSocketProtocolError) or not isinstance(exc, RuntimeError):
        raise Fail('expected APPLICATION_ERROR %r, got %r' % (message, exc))
    expect_eq('error message', str(exc), message)


class Collector(Subscriber):
    """Collects a stream's items; `changed` is set on every signal."""

    def __init__(self):
        self.items = []
        self.error = None
        self.completed = False
        self.subscription = None
        self.changed = asyncio.Event()

    def on_subscribe(self, subscription):
        self.subscription = subscription

    def on_next(self, value, is_complete=False):
        self.items.append(ensure_bytes(value.data).decode())
        if is_complete:
            self.completed = True
        self.changed.set()

    def on_error(self, exception):
        self.error = exception
        self.changed.set()

    def on_complete(self):
        self.completed = True
        self.changed.set()

    @property
    def terminated(self):
        return self.completed or self.error is not None

    async def until(self, predicate):
        while not predicate():
            self.changed.clear()
            await self.changed.wait()

    async def finish(self):
        await self.until(lambda: self.terminated)
        if self.error is not None:
            raise self.error
        return self.items


class ListPublisher(Publisher, Subscription):
    """Sends payloads as the responder grants credit, then completes.

    With `complete_with_last`, completion rides on the last payload (N+C)
    instead of a separate COMPLETE frame. Workaround: rsocket-py's sender
    round-robins over queued frames and lets a separate COMPLETE overtake
    the remaining fragments of a fragmented payload of the same stream.
    """

    def __init__(self, payloads, complete_with_last=False):
        self._payloads = list(payloads)
        self._complete_with_last = complete_with_last
        self._subscriber = None
        self._done = False

    def subscribe(self, subscriber):
        self._subscriber = subscriber
        subscriber.on_subscribe(self)

    def request(self, n):
        while n > 0 and self._payloads and not self._done:
            n -= 1
            payload = self._payloads.pop(0)
            if self._complete_with_last and not self._payloads:
                self._done = True
                self._subscriber.on_next(payload, is_complete=True)
                return
            self._subscriber.on_next(payload)
        if not self._payloads and not self._done:
            self._done = True
            self._subscriber.on_complete()

    def cancel(self):
        self._done = True


class Conformance:
    def __init__(self, args):
        self.args = args
        self.caps = None
        self.client = None
        self.extra = []
        self.passed = self.failed = self.skipped = 0

    async def connect(self, metadata_encoding=OCTET_STREAM, fragment_size_bytes=None,
                      port=None, honor_lease=False, handler_factory=BaseRequestHandler):
        port = self.args.port if port is None else port
        if self.args.transport == 'tcp':
            reader, writer = await asyncio.open_connection(self.args.host, port)
            transport = TransportTCP(reader, writer)
        else:
            from rsocket.transports.aiohttp_websocket import TransportAioHttpClient
            transport = TransportAioHttpClient(
                url='ws://%s:%d/' % (self.args.host, port))
        client = RSocketClient(single_transport_provider(transport),
                               handler_factory=handler_factory,
                               honor_lease=honor_lease,
                               data_encoding=OCTET_STREAM,
                               metadata_encoding=metadata_encoding,
                               fragment_size_bytes=fragment_size_bytes)
        await client.connect()
        return client

    async def rr(self, client, data, metadata=None):
        return await client.request_response(Payload(ensure_bytes(data), metadata))

    async def rr_text(self, client, data):
        return ensure_bytes((await self.rr(client, data)).data).decode()

    def stream(self, client, data, credit=2 ** 31 - 1, metadata=None):
        collector = Collector()
        client.request_stream(Payload(ensure_bytes(data), metadata)) \
            .initial_request_n(credit).subscribe(collector)
        return collector

    def skip_server(self, what):
        raise Skip('server %s does not support %s' % (self.caps['impl'], what))

    async def poll_until(self, client, query, want):
        while await self.rr_text(client, query) != want:
            await asyncio.sleep(0.02)

    # --- cases ------------------------------------------------------------

    async def case_caps(self):
        caps = json.loads(await self.rr_text(self.client, 'caps'))
        for key in ('fragmentation', 'metadataPush', 'lease', 'resume', 'routing'):
            if not isinstance(caps.get(key), bool):
                raise Fail('caps: %r missing or not a boolean' % key)
        if not isinstance(caps.get('impl'), str):
            raise Fail('caps: "impl" missing or not a string')
        self.caps = caps

    async def case_rr_echo(self):
        reply = await self.rr(self.client, 'hello', b'meta-1')
        expect_eq('data', ensure_bytes(reply.data), b'echo:hello')
        expect_eq('metadata', ensure_bytes(reply.metadata), b'meta-1')

    async def case_rr_no_metadata(self):
        reply = await self.rr(self.client, 'plain')
        expect_eq('data', ensure_bytes(reply.data), b'echo:plain')
        # rsocket-py reports absent metadata as b'' (it cannot tell absent
        # from empty).
        if reply.metadata:
            raise Fail('metadata: got %r, want none' % reply.metadata)

    async def case_rr_error(self):
        try:
            await self.rr(self.client, 'fail')
            exc = None
        except Exception as e:  # the error under test
            exc = e
        expect_app_error(exc, 'requested failure')

    async def case_stream(self):
        expect_eq('items', await self.stream(self.client, '5').finish(),
                  [str(i) for i in range(5)])

    async def case_stream_empty(self):
        expect_eq('items', await self.stream(self.client, '0').finish(), [])

    async def case_stream_bad_n(self):
        for n in ('-1', 'abc'):
            try:
                await self.stream(self.client, n).finish()
                exc = None
            except Exception as e:
                exc = e
            expect_app_error(exc, 'bad n')

    async def case_stream_batches(self):
        collector = self.stream(self.client, '10', credit=2)
        requested = 0
        for i, batch in enumerate((2, 3, 5)):
            if i > 0:
                collector.subscription.request(batch)
            requested += batch
            await collector.until(lambda: len(collector.items) >= requested or collector.terminated)
            if collector.error is not None:
                raise Fail('after %d items: %r' % (len(collector.items), collector.error))
            if len(collector.items) > requested:
                raise Fail('%d items arrived, only %d requested' % (len(collector.items), requested))
            if requested < 10:
                if collector.completed:
                    raise Fail('completed after %d items, want 10' % requested)
                try:
                    await asyncio.wait_for(
                        collector.until(lambda: len(collector.items) > requested
                                        or collector.terminated), QUIET)
                    raise Fail('after %d requested: got %d items, completed=%s, error=%r'
                               % (requested, len(collector.items), collector.completed,
                                  collector.error))
                except asyncio.TimeoutError:
                    pass
        expect_eq('items', await collector.finish(), [str(i) for i in range(10)])

    async def case_stream_cancel(self):
        collector = self.stream(self.client, '100000', credit=5)
        await collector.until(lambda: len(collector.items) >= 3 or collector.terminated)
        if collector.terminated:
            raise Fail('ended after %d items: %r' % (len(collector.items), collector.error))
        collector.subscription.cancel()
        expect_eq('items', collector.items[:3], ['0', '1', '2'])
        # The server must see the CANCEL and stop, within the credit of 5.
        while True:
            answer = json.loads(await self.rr_text(self.client, 'produced'))
            if answer.get('state') != 'running':
                break
            await asyncio.sleep(0.02)
        expect_eq('stream state after CANCEL', answer.get('state'), 'cancelled')
        if not 3 <= answer.get('produced', -1) <= 5:
            raise Fail('produced %r items, expected 3 to 5 (credit 5)' % answer.get('produced'))
        expect_eq('reply after cancel', await self.rr_text(self.client, 'after-cancel'),
                  'echo:after-cancel')
        expect_eq('stream after cancel', await self.stream(self.client, '2').finish(),
                  ['0', '1'])

    async def case_channel(self):
        collector = Collector()
        outbound = ListPublisher([Payload(b'b'), Payload(b'c'), Payload(b'd')])
        self.client.request_channel(Payload(b'a'), outbound) \
            .initial_request_n(4).subscribe(collector)
        expect_eq('items', await collector.finish(), ['A', 'B', 'C', 'D'])

    async def case_fnf(self):
        before = int(await self.rr_text(self.client, 'fnf-count'))
        for data in (b'fnf-1', b'fnf-2', b'fnf-3'):
            await self.client.fire_and_forget(Payload(data))
        await self.poll_until(self.client, 'fnf-count', str(before + 3))

    async def case_metadata_push(self):
        if not self.caps['metadataPush']:
            self.skip_server('metadata push')
        before = int(await self.rr_text(self.client, 'mp-count'))
        marker = 'mp-marker-%d' % os.getpid()
        await self.client.metadata_push(marker.encode())
        await self.poll_until(self.client, 'mp-last', 'mp:' + marker)
        expect_eq('mp-count', await self.rr_text(self.client, 'mp-count'), str(before + 1))

    async def routing_client(self):
        if not self.caps['routing']:
            self.skip_server('routing')
        client = await self.connect(
            metadata_encoding=WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA)
        self.extra.append(client)
        return client

    async def case_routing_echo(self):
        client = await self.routing_client()
        metadata = composite(route('echo'))
        reply = await self.rr(client, 'routed', metadata)
        expect_eq('data', ensure_bytes(reply.data), b'echo:routed')
        expect_eq('metadata', ensure_bytes(reply.metadata), metadata)

    async def case_routing_stream(self):
        client = await self.routing_client()
        got = await self.stream(client, '3', metadata=composite(route('stream'))).finish()
        expect_eq('items', got, ['0', '1', '2'])

    async def case_routing_channel(self):
        client = await self.routing_client()
        collector = Collector()
        client.request_channel(Payload(b'x', composite(route('channel'))),
                               ListPublisher([Payload(b'y')])).subscribe(collector)
        expect_eq('items', await collector.finish(), ['X', 'Y'])

    async def case_routing_unknown(self):
        client = await self.routing_client()
        try:
            await self.rr(client, 'x', composite(route('nope')))
            exc = None
        except Exception as e:
            exc = e
        expect_app_error(exc, 'unknown route: nope')
        try:
            await self.stream(client, '1', metadata=composite(route('echo'))).finish()
            exc = None
        except Exception as e:
            exc = e
        expect_app_error(exc, 'unknown route: echo')

    async def case_fragmentation(self):
        if not self.caps['fragmentation']:
            self.skip_server('fragmented frames')
        client = await self.connect(fragment_size_bytes=64)
        self.extra.append(client)
        data = bytes(ord('a') + i % 26 for i in range(1500))
        metadata = bytes(ord('A') + i % 26 for i in range(300))
        reply = await self.rr(client, data, metadata)
        expect_eq('data', ensure_bytes(reply.data), b'echo:' + data)
        expect_eq('metadata', ensure_bytes(reply.metadata), metadata)
        collector = Collector()
        outbound = ListPublisher([Payload(b'y' * 400)], complete_with_last=True)
        client.request_channel(Payload(b'x' * 400), outbound).subscribe(collector)
        expect_eq('channel items', await collector.finish(), ['X' * 400, 'Y' * 400])

    async def case_lease(self):
        # rsocket-py honours leases by queueing requests beyond them (it
        # never fails them), so the third request is held until the next
        # LEASE instead of failing.
        if not self.caps['lease']:
            self.skip_server('lease')
        leased = await self.connect(honor_lease=True)
        self.extra.append(leased)
        # Held until the server's first LEASE, then sent.
        expect_eq('a', await self.rr_text(leased, 'a'), 'echo:a')
        expect_eq('b', await self.rr_text(leased, 'b'), 'echo:b')
        third = asyncio.ensure_future(self.rr_text(leased, 'c'))
        await asyncio.sleep(QUIET)
        if third.done():
            raise Fail('a third request was answered on a lease of 2: %r' % third.result())
        granted = await self.rr_text(self.client, 'lease-grant')
        if not granted.startswith('granted:') or granted == 'granted:0':
            raise Fail('lease-grant answered %r' % granted)
        expect_eq('c', await third, 'echo:c')
        stats = json.loads(await self.rr_text(leased, 'lease-stats'))
        expect_eq('requests seen', stats.get('requests'), 3)
        expect_eq('requests rejected', stats.get('rejected'), 0)

    async def case_lease_refused(self):
        port = self.caps.get('noLeasePort')
        if not isinstance(port, int) or port <= 0:
            raise Skip('server %s has no listener without lease' % self.caps['impl'])
        refused = asyncio.get_running_loop().create_future()

        class OnError(BaseRequestHandler):
            async def on_error(self, error_code, payload):
                if not refused.done():
                    refused.set_result(error_code)

        client = await self.connect(port=port, honor_lease=True, handler_factory=OnError)
        self.extra.append(client)
        code = await refused
        want = ErrorCode.REJECTED_SETUP if self.caps['impl'].startswith('rsocket-js') \
            else ErrorCode.UNSUPPORTED_SETUP
        expect_eq('setup error', code, want)

    async def case_resume(self):
        raise Skip('%s has no resumption support (server resume=%s)'
                   % (IMPL, str(self.caps['resume']).lower()))

    # --- driver -----------------------------------------------------------

    async def run_case(self, name, case):
        try:
            await asyncio.wait_for(case(), self.args.case_timeout)
            self.passed += 1
            print('PASS %s' % name, flush=True)
        except Skip as e:
            self.skipped += 1
            print('SKIP %s: %s' % (name, e), flush=True)
        except asyncio.TimeoutError:
            self.failed += 1
            print('FAIL %s: timed out after %ss' % (name, self.args.case_timeout), flush=True)
        except Exception as e:
            self.failed += 1
            print('FAIL %s: %s' % (name, str(e) or repr(e)), flush=True)

    def summary(self):
        print('%d skipped' % self.skipped)
        print('%d passed, %d failed' % (self.passed, self.failed), flush=True)

    async def run(self):
        try:
            self.client = await asyncio.wait_for(self.connect(), self.args.case_timeout)
        except Exception as e:
            self.failed += 1
            print('FAIL connect: %r' % e)
            self.summary()
            return
        await self.run_case('caps', self.case_caps)
        if self.caps is None:
            self.summary()
            return
        for name in ('rr_echo', 'rr_no_metadata', 'rr_error', 'stream', 'stream_empty',
                     'stream_bad_n', 'stream_batches', 'stream_cancel', 'channel', 'fnf',
                     'metadata_push', 'routing_echo', 'routing_stream', 'routing_channel',
                     'routing_unknown', 'fragmentation', 'lease', 'lease_refused', 'resume'):
            await self.run_case(name, getattr(self, 'case_' + name))
        for client in [self.client] + self.extra:
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception:
                pass
        self.summary()


def main():
    args = parse_args('rsocket-py interop conformance client', client=True)
    conformance = Conformance(args)
    asyncio.run(conformance.run())
    sys.exit(1 if conformance.failed else 0)


if __name__ == '__main__':
    main()
