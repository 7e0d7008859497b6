// rsocket-js interop responder: serves the contract of docs/interop.md.
//
//   node server.js --transport tcp|ws --host 127.0.0.1 --port 0
//
// Prints `READY <transport> <host> <port>` once it accepts connections.
// (`--fragment` is accepted but ignored: rsocket-js 1.0.0-alpha.3 servers
// never fragment what they send.)
"use strict";

const net = require("net");
const { RSocketServer, RSocketError, ErrorCodes } = require("rsocket-core");
const { TcpServerTransport } = require("rsocket-tcp-server");
const { WebsocketServerTransport } = require("rsocket-websocket-server");
const { WebSocketServer } = require("ws");
const { COMPOSITE, IMPL, parseArgs, routeOf, buf } = require("./common");

const appError = (message) => new RSocketError(ErrorCodes.APPLICATION_ERROR, message);

// The bound port, once known: rsocket-js's server is not configured for
// lease, so this very listener is the one "without lease" (it refuses the
// L flag with REJECTED_SETUP "Lease has to be disabled").
let boundPort = 0;
const caps = () =>
  JSON.stringify({
    impl: IMPL,
    fragmentation: true, // reassembles fragmented requests
    metadataPush: false, // the server side drops METADATA_PUSH frames
    // rsocket-js 1.0.0-alpha.3 servers cannot send LEASE frames (a server
    // configured with `lease` only honours its clients' leases).
    lease: false,
    resume: true, // sessions kept 30 s after a lost transport
    routing: true,
    noLeasePort: boundPort,
  });

// Sends queued payloads only while the requester has granted credit; one
// item per macrotask so that CANCEL and REQUEST_N are seen in between.
class CreditEmitter {
  constructor(sink) {
    this.sink = sink; // onNext / onComplete / onError
    this.credit = 0;
    this.queue = [];
    this.finished = false; // nothing more will be queued
    this.done = false; // terminal signal sent, or cancelled
    this.scheduled = false;
    this.produce = null; // optional: () => payload | null, called with credit
  }
  push(payload) {
    this.queue.push(payload);
    this.schedule();
  }
  finish() {
    this.finished = true;
    this.schedule();
  }
  request(n) {
    this.credit += n;
    this.schedule();
  }
  cancel() {
    this.done = true;
  }
  schedule() {
    if (this.scheduled || this.done) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.step();
    });
  }
  step() {
    if (this.done) return;
    if (this.credit > 0 && this.queue.length === 0 && this.produce) {
      const p = this.produce();
      if (p) this.queue.push(p);
    }
    if (this.credit > 0 && this.queue.length > 0) {
      this.credit -= 1;
      this.sink.onNext(this.queue.shift(), false);
      this.schedule();
    } else if (this.finished && this.queue.length === 0) {
      this.done = true;
      this.sink.onComplete();
    }
  }
}

function responder(setup) {
  const routing = setup.metadataMimeType === COMPOSITE;
  const state = { fnf: 0, lastStream: null };
  const checkRoute = (payload, expected) => {
    if (!routing) return null;
    const route = routeOf(payload.metadata);
    return route !== null && route !== expected ? `unknown route: ${route}` : null;
  };
  const noop = { cancel() {}, onExtension() {}, request() {} };

  return {
    requestResponse(payload, sink) {
      const data = buf(payload.data).toString();
      const routeError = checkRoute(payload, "echo");
      setImmediate(() => {
        if (routeError) return sink.onError(appError(routeError));
        switch (data) {
          case "fnf-count":
            return sink.onNext({ data: Buffer.from(String(state.fnf)) }, true);
          case "mp-count":
            return sink.onNext({ data: Buffer.from("0") }, true);
          case "mp-last":
            return sink.onNext({ data: Buffer.from("mp:") }, true);
          case "caps":
            return sink.onNext({ data: Buffer.from(caps()) }, true);
          case "produced": {
            const last = state.lastStream;
            const answer = last ? { produced: last.produced, state: last.state } : { produced: 0, state: "none" };
            return sink.onNext({ data: Buffer.from(JSON.stringify(answer)) }, true);
          }
          case "fail":
            return sink.onError(appError("requested failure"));
          default: {
            const reply = { data: Buffer.concat([Buffer.from("echo:"), buf(payload.data)]) };
            if (payload.metadata) reply.metadata = payload.metadata;
            return sink.onNext(reply, true);
          }
        }
      });
      return noop;
    },

    fireAndForget(payload, sink) {
      state.fnf += 1;
      return noop;
    },

    requestStream(payload, initialRequestN, sink) {
      const routeError = checkRoute(payload, "stream");
      const text = buf(payload.data).toString().trim();
      const n = /^[0-9]+$/.test(text) ? Number(text) : -1;
      if (routeError || n < 0) {
        setImmediate(() => sink.onError(appError(routeError || "bad n")));
        return noop;
      }
      // Progress for the `produced` query.
      const progress = { produced: 0, state: "running" };
      state.lastStream = progress;
      const counting = {
        onNext(p, complete) {
          progress.produced += 1;
          sink.onNext(p, complete);
        },
        onComplete() {
          progress.state = "completed";
          sink.onComplete();
        },
        onError(e) {
          sink.onError(e);
        },
      };
      const emitter = new CreditEmitter(counting);
      let next = 0;
      emitter.finished = n === 0;
      emitter.produce = () => {
        if (next >= n) return null;
        const p = { data: Buffer.from(String(next)) };
        next += 1;
        if (next === n) emitter.finished = true;
        return p;
      };
      emitter.request(initialRequestN);
      return {
        request: (k) => emitter.request(k),
        cancel: () => {
          if (progress.state === "running") progress.state = "cancelled";
          emitter.cancel();
        },
        onExtension() {},
      };
    },

    requestChannel(payload, initialRequestN, isCompleted, sink) {
      const routeError = checkRoute(payload, "channel");
      if (routeError) {
        setImmediate(() => sink.onError(appError(routeError)));
        return { ...noop, onNext() {}, onComplete() {}, onError() {} };
      }
      const upper = (p) => ({ data: Buffer.from(buf(p.data).toString().toUpperCase()) });
      const emitter = new CreditEmitter(sink);
      emitter.push(upper(payload));
      emitter.request(initialRequestN);
      if (isCompleted) {
        emitter.finish();
      } else {
        // Credit for the requester's payloads after the first.
        sink.request(2147483647);
      }
      return {
        // the requester's payloads
        onNext(p, isComplete) {
          emitter.push(upper(p));
          if (isComplete) emitter.finish();
        },
        onComplete() {
          emitter.finish();
        },
        onError() {
          emitter.cancel();
        },
        // credit and cancellation for our output
        request: (k) => emitter.request(k),
        cancel: () => emitter.cancel(),
        onExtension() {},
      };
    },
  };
}

async function main() {
  const args = parseArgs(process.argv);
  let listening = null;
  let transport;
  if (args.transport === "tcp") {
    transport = new TcpServerTransport({
      listenOptions: { host: args.host, port: args.port },
      socketCreator: (options) => (listening = new net.Server(options)),
    });
  } else {
    transport = new WebsocketServerTransport({
      host: args.host,
      port: args.port,
      // `ws` from our own pins, so that the bound port can be read back.
      wsCreator: (options) => (listening = new WebSocketServer(options)),
    });
  }
  const server = new RSocketServer({
    transport,
    acceptor: { accept: async (setup) => responder(setup) },
    resume: { sessionTimeout: 30000 },
  });
  const closeable = await server.bind();
  const { port } = listening.address();
  boundPort = port;
  process.stdout.write(`READY ${args.transport} ${args.host} ${port}\n`);
  const stop = () => {
    closeable.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
