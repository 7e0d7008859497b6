// rsocket-js interop conformance client for servers of the docs/interop.md
// contract.
//
//   node client.js --transport tcp|ws --host 127.0.0.1 --port P
//
// Prints `PASS name`, `FAIL name: reason` or `SKIP name: reason` per case,
// then `K skipped` and a last line `N passed, M failed`; exits 1 on any
// failure.
"use strict";

const { RSocketConnector, ErrorCodes } = require("rsocket-core");
const { TcpClientTransport } = require("rsocket-tcp-client");
const { WebsocketClientTransport } = require("rsocket-websocket-client");
const { encodeCompositeMetadata, encodeRoute, WellKnownMimeType } = require("rsocket-composite-metadata");
const WebSocket = require("ws");
const { COMPOSITE, IMPL, parseArgs, buf, startRelay } = require("./common");

const OCTET_STREAM = "application/octet-stream";
// After a batch was delivered, how long to watch for items beyond the
// credit granted. Over-delivery follows the batch directly; this orders
// nothing.
const QUIET_MS = 150;

class Skip extends Error {}

function expectEq(what, got, want) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}

function expectAppError(err, message) {
  if (!err) throw new Error(`expected APPLICATION_ERROR ${JSON.stringify(message)}, got success`);
  // Not `instanceof RSocketError`: rsocket-js is compiled to ES5, where a
  // subclass of Error constructs a plain Error; `code` is set on it all the same.
  if (err.code !== ErrorCodes.APPLICATION_ERROR || err.message !== message) {
    throw new Error(
      `expected APPLICATION_ERROR ${JSON.stringify(message)}, got ${err.code !== undefined ? "0x" + err.code.toString(16) + " " : ""}${err.message}`,
    );
  }
}

const text = (p) => buf(p.data).toString();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const routed = (route, data) => ({
  data: Buffer.from(data),
  metadata: encodeCompositeMetadata([[WellKnownMimeType.MESSAGE_RSOCKET_ROUTING, encodeRoute(route)]]),
});

// Collects a stream's (or channel's) items; `changed()` resolves on the next
// signal.
class Collector {
  constructor() {
    this.items = [];
    this.error = null;
    this.completed = false;
    this.waiters = [];
  }
  notify() {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }
  onNext(payload, isComplete) {
    this.items.push(text(payload));
    if (isComplete) this.completed = true;
    this.notify();
  }
  onError(error) {
    this.error = error;
    this.notify();
  }
  onComplete() {
    this.completed = true;
    this.notify();
  }
  onExtension() {}
  get terminated() {
    return this.completed || this.error !== null;
  }
  async until(predicate) {
    while (!predicate()) await new Promise((r) => this.waiters.push(r));
  }
  async finish() {
    await this.until(() => this.terminated);
    if (this.error) throw this.error;
    return this.items;
  }
}

class Conformance {
  constructor(args) {
    this.args = args;
    this.caps = null;
    this.extra = [];
    this.passed = 0;
    this.failed = 0;
    this.skipped = 0;
  }

  async connect({ metadataMimeType = OCTET_STREAM, fragment = 0, lease = false, port: viaPort = 0, resume } = {}) {
    const host = this.args.host;
    const port = viaPort || this.args.port;
    const transport =
      this.args.transport === "tcp"
        ? new TcpClientTransport({ connectionOptions: { host, port } })
        : new WebsocketClientTransport({
            url: `ws://${host}:${port}/`,
            // Node 20 has no global WebSocket: use the `ws` package.
            wsCreator: (url) => new WebSocket(url),
          });
    const connector = new RSocketConnector({
      setup: { dataMimeType: OCTET_STREAM, metadataMimeType, keepAlive: 10000, lifetime: 60000 },
      fragmentation: { maxOutboundFragmentSize: fragment },
      // With `lease`, SETUP carries the L flag and requests wait for the
      // server's LEASE (rsocket-js queues them; it never fails them).
      ...(lease ? { lease: { maxPendingRequests: 256 } } : {}),
      transport,
      resume,
    });
    return connector.connect();
  }

  rr(client, payload) {
    return new Promise((resolve, reject) => {
      client.requestResponse(payload, {
        onNext: (p) => resolve(p),
        onComplete: () => reject(new Error("completed without a payload")),
        onError: reject,
        onExtension() {},
      });
    });
  }

  async rrText(client, data) {
    return text(await this.rr(client, { data: Buffer.from(data) }));
  }

  stream(client, payload, credit = 2147483647) {
    const c = new Collector();
    c.handle = client.requestStream(payload, credit, c);
    return c;
  }

  channel(client, first, rest, credit = 2147483647) {
    // `rest` is sent as the responder grants credit, then completion.
    const c = new Collector();
    const queue = rest.slice();
    let handle = null;
    let credit_ = 0;
    let done = false;
    const pump = () => {
      while (handle && !done && credit_ > 0 && queue.length > 0) {
        credit_ -= 1;
        handle.onNext(queue.shift(), false);
      }
      if (handle && !done && queue.length === 0) {
        done = true;
        handle.onComplete();
      }
    };
    c.request = (n) => {
      credit_ += n;
      setImmediate(pump);
    };
    c.cancel = () => {
      done = true;
    };
    handle = client.requestChannel(first, credit, false, c);
    c.handle = handle;
    setImmediate(pump);
    return c;
  }

  skipServer(what) {
    throw new Skip(`server ${this.caps.impl} does not support ${what}`);
  }

  async pollUntil(client, query, want) {
    while ((await this.rrText(client, query)) !== want) await sleep(20);
  }

  async caught(promise) {
    try {
      await promise;
      return null;
    } catch (e) {
      return e;
    }
  }

  // --- cases --------------------------------------------------------------

  async case_caps() {
    const caps = JSON.parse(await this.rrText(this.client, "caps"));
    for (const key of ["fragmentation", "metadataPush", "lease", "resume", "routing"]) {
      if (typeof caps[key] !== "boolean") throw new Error(`caps: "${key}" missing or not a boolean`);
    }
    if (typeof caps.impl !== "string") throw new Error('caps: "impl" missing or not a string');
    this.caps = caps;
  }

  async case_rr_echo() {
    const reply = await this.rr(this.client, { data: Buffer.from("hello"), metadata: Buffer.from("meta-1") });
    expectEq("data", text(reply), "echo:hello");
    expectEq("metadata", buf(reply.metadata).toString(), "meta-1");
  }

  async case_rr_no_metadata() {
    const reply = await this.rr(this.client, { data: Buffer.from("plain") });
    expectEq("data", text(reply), "echo:plain");
    // rsocket-js reports absent and empty metadata alike (null).
    if (reply.metadata && reply.metadata.length > 0) throw new Error(`metadata: got ${reply.metadata}, want none`);
  }

  async case_rr_error() {
    expectAppError(await this.caught(this.rr(this.client, { data: Buffer.from("fail") })), "requested failure");
  }

  async case_stream() {
    expectEq("items", await this.stream(this.client, { data: Buffer.from("5") }).finish(), ["0", "1", "2", "3", "4"]);
  }

  async case_stream_empty() {
    expectEq("items", await this.stream(this.client, { data: Buffer.from("0") }).finish(), []);
  }

  async case_stream_bad_n() {
    for (const n of ["-1", "abc"]) {
      expectAppError(await this.caught(this.stream(this.client, { data: Buffer.from(n) }).finish()), "bad n");
    }
  }

  async case_stream_batches() {
    const c = this.stream(this.client, { data: Buffer.from("10") }, 2);
    let requested = 0;
    const batches = [2, 3, 5];
    for (let i = 0; i < batches.length; i++) {
      if (i > 0) c.handle.request(batches[i]);
      requested += batches[i];
      await c.until(() => c.items.length >= requested || c.terminated);
      if (c.error) throw new Error(`after ${c.items.length} items: ${c.error.message}`);
      if (c.items.length > requested) throw new Error(`${c.items.length} items arrived, only ${requested} requested`);
      if (requested < 10) {
        if (c.completed) throw new Error(`completed after ${requested} items, want 10`);
        const extra = await Promise.race([
          c.until(() => c.items.length > requested || c.terminated).then(() => true),
          sleep(QUIET_MS).then(() => false),
        ]);
        if (extra) {
          throw new Error(
            `after ${requested} requested: got ${c.items.length} items, completed=${c.completed}, error=${c.error}`,
          );
        }
      }
    }
    expectEq("items", await c.finish(), ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
  }

  async case_stream_cancel() {
    const c = this.stream(this.client, { data: Buffer.from("100000") }, 5);
    await c.until(() => c.items.length >= 3 || c.terminated);
    if (c.terminated) throw new Error(`ended after ${c.items.length} items: ${c.error}`);
    c.handle.cancel();
    expectEq("items", c.items.slice(0, 3), ["0", "1", "2"]);
    // The server must see the CANCEL and stop, within the credit of 5.
    let answer;
    for (;;) {
      answer = JSON.parse(await this.rrText(this.client, "produced"));
      if (answer.state !== "running") break;
      await sleep(20);
    }
    expectEq("stream state after CANCEL", answer.state, "cancelled");
    if (!(answer.produced >= 3 && answer.produced <= 5)) {
      throw new Error(`produced ${answer.produced} items, expected 3 to 5 (credit 5)`);
    }
    expectEq("reply after cancel", await this.rrText(this.client, "after-cancel"), "echo:after-cancel");
    expectEq("stream after cancel", await this.stream(this.client, { data: Buffer.from("2") }).finish(), ["0", "1"]);
  }

  async case_channel() {
    const rest = ["b", "c", "d"].map((s) => ({ data: Buffer.from(s) }));
    const c = this.channel(this.client, { data: Buffer.from("a") }, rest, 2);
    // Grant the responder more credit only as items arrive.
    let granted = 2;
    while (!c.terminated) {
      await c.until(() => c.items.length >= granted || c.terminated);
      if (!c.terminated && c.items.length >= granted) {
        c.handle.request(2);
        granted += 2;
      }
    }
    expectEq("items", await c.finish(), ["A", "B", "C", "D"]);
  }

  async case_fnf() {
    const before = Number(await this.rrText(this.client, "fnf-count"));
    for (const d of ["fnf-1", "fnf-2", "fnf-3"]) {
      this.client.fireAndForget({ data: Buffer.from(d) }, { onComplete() {}, onError() {} });
    }
    await this.pollUntil(this.client, "fnf-count", String(before + 3));
  }

  async case_metadata_push() {
    throw new Skip(`${IMPL} cannot send METADATA_PUSH (its requester throws "Method not implemented.")`);
  }

  async routingClient() {
    if (!this.caps.routing) this.skipServer("routing");
    const client = await this.connect({ metadataMimeType: COMPOSITE });
    this.extra.push(client);
    return client;
  }

  async case_routing_echo() {
    const client = await this.routingClient();
    const request = routed("echo", "routed");
    const reply = await this.rr(client, request);
    expectEq("data", text(reply), "echo:routed");
    expectEq("metadata", buf(reply.metadata).toString("hex"), request.metadata.toString("hex"));
  }

  async case_routing_stream() {
    const client = await this.routingClient();
    expectEq("items", await this.stream(client, routed("stream", "3")).finish(), ["0", "1", "2"]);
  }

  async case_routing_channel() {
    const client = await this.routingClient();
    const c = this.channel(client, routed("channel", "x"), [{ data: Buffer.from("y") }]);
    expectEq("items", await c.finish(), ["X", "Y"]);
  }

  async case_routing_unknown() {
    const client = await this.routingClient();
    expectAppError(await this.caught(this.rr(client, routed("nope", "x"))), "unknown route: nope");
    expectAppError(await this.caught(this.stream(client, routed("echo", "1")).finish()), "unknown route: echo");
  }

  async case_fragmentation() {
    if (!this.caps.fragmentation) this.skipServer("fragmented frames");
    // rsocket-js counts its fragment size in payload bytes (metadata, its
    // length field and data), not frame bytes: 58 + 6 header bytes = 64.
    const client = await this.connect({ fragment: 58 });
    this.extra.push(client);
    const data = Buffer.from(Array.from({ length: 1500 }, (_, i) => 97 + (i % 26)));
    const metadata = Buffer.from(Array.from({ length: 300 }, (_, i) => 65 + (i % 26)));
    const reply = await this.rr(client, { data, metadata });
    expectEq("data", text(reply), "echo:" + data.toString());
    expectEq("metadata", buf(reply.metadata).toString(), metadata.toString());
    const c = this.channel(client, { data: Buffer.from("x".repeat(400)) }, [{ data: Buffer.from("y".repeat(400)) }]);
    expectEq("channel items", await c.finish(), ["X".repeat(400), "Y".repeat(400)]);
  }

  async case_lease() {
    if (!this.caps.lease) this.skipServer("lease");
    const leased = await this.connect({ lease: true });
    this.extra.push(leased);
    // Held until the server's first LEASE, then sent.
    expectEq("a", await this.rrText(leased, "a"), "echo:a");
    expectEq("b", await this.rrText(leased, "b"), "echo:b");
    let answered = null;
    const third = this.rrText(leased, "c").then((t) => (answered = t));
    await sleep(QUIET_MS);
    if (answered !== null) throw new Error(`a third request was answered on a lease of 2: ${answered}`);
    const granted = await this.rrText(this.client, "lease-grant");
    if (!granted.startsWith("granted:") || granted === "granted:0") throw new Error(`lease-grant answered ${granted}`);
    await third;
    expectEq("c", answered, "echo:c");
    const stats = JSON.parse(await this.rrText(leased, "lease-stats"));
    expectEq("requests seen", stats.requests, 3);
    expectEq("requests rejected", stats.rejected, 0);
  }

  async case_lease_refused() {
    const port = this.caps.noLeasePort;
    if (!Number.isInteger(port) || port <= 0) throw new Skip(`server ${this.caps.impl} has no listener without lease`);
    const client = await this.connect({ lease: true, port });
    this.extra.push(client);
    const error = await new Promise((resolve) => client.onClose((e) => resolve(e)));
    const want = this.caps.impl.startsWith("rsocket-js") ? ErrorCodes.REJECTED_SETUP : ErrorCodes.UNSUPPORTED_SETUP;
    expectEq("setup error", error && error.code, want);
  }

  // Through a relay that the case cuts: a stream with explicit credit gets
  // 3 items, the transport is cut, more credit is requested, and the rest
  // arrives over the resumed session, in order and once.
  async case_resume() {
    if (!this.caps.resume) this.skipServer("resumption");
    const relay = await startRelay(this.args.host, this.args.port);
    try {
      const token = Buffer.from(`js-resume-${process.pid}-${Date.now()}`);
      const client = await this.connect({
        port: relay.port,
        resume: {
          tokenGenerator: () => token,
          // The delay before each reconnect attempt.
          reconnectFunction: (attempt) => sleep(Math.min(20 * 2 ** attempt, 500)),
        },
      });
      this.extra.push(client);
      const c = this.stream(client, { data: Buffer.from("10") }, 3);
      await c.until(() => c.items.length >= 3 || c.terminated);
      if (c.terminated) throw new Error(`ended after ${c.items.length} items: ${c.error && c.error.message}`);
      relay.cut();
      c.handle.request(7);
      expectEq("items", await c.finish(), ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
      expectEq("reply after resume", await this.rrText(client, "after-resume"), "echo:after-resume");
      if (relay.accepted < 2) throw new Error(`the client did not reconnect (${relay.accepted} connection)`);
    } finally {
      relay.close();
    }
  }

  // --- driver -------------------------------------------------------------

  async runCase(name, fn) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${this.args.caseTimeout / 1000}s`)), this.args.caseTimeout);
    });
    try {
      await Promise.race([fn.call(this), timeout]);
      this.passed += 1;
      console.log(`PASS ${name}`);
    } catch (e) {
      if (e instanceof Skip) {
        this.skipped += 1;
        console.log(`SKIP ${name}: ${e.message}`);
      } else {
        this.failed += 1;
        console.log(`FAIL ${name}: ${e && e.message ? e.message : e}`);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  summary() {
    console.log(`${this.skipped} skipped`);
    console.log(`${this.passed} passed, ${this.failed} failed`);
  }

  async run() {
    try {
      this.client = await Promise.race([
        this.connect(),
        sleep(this.args.caseTimeout).then(() => {
          throw new Error(`timed out after ${this.args.caseTimeout / 1000}s`);
        }),
      ]);
    } catch (e) {
      this.failed += 1;
      console.log(`FAIL connect: ${e && e.message ? e.message : e}`);
      return this.summary();
    }
    await this.runCase("caps", this.case_caps);
    if (!this.caps) return this.summary();
    for (const name of [
      "rr_echo",
      "rr_no_metadata",
      "rr_error",
      "stream",
      "stream_empty",
      "stream_bad_n",
      "stream_batches",
      "stream_cancel",
      "channel",
      "fnf",
      "metadata_push",
      "routing_echo",
      "routing_stream",
      "routing_channel",
      "routing_unknown",
      "fragmentation",
      "lease",
      "lease_refused",
      "resume",
    ]) {
      await this.runCase(name, this["case_" + name]);
    }
    for (const c of [this.client, ...this.extra]) c.close();
    this.summary();
  }
}

const args = parseArgs(process.argv, { caseTimeout: 10000 });
const conformance = new Conformance(args);
conformance.run().then(
  () => process.exit(conformance.failed ? 1 : 0),
  (e) => {
    console.error(e);
    process.exit(2);
  },
);
