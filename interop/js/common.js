// Shared helpers for the rsocket-js interop peers (server.js, client.js).
"use strict";

const { decodeCompositeMetadata, decodeRoutes, WellKnownMimeType } = require("rsocket-composite-metadata");

const COMPOSITE = WellKnownMimeType.MESSAGE_RSOCKET_COMPOSITE_METADATA.string;
const ROUTING = WellKnownMimeType.MESSAGE_RSOCKET_ROUTING.string;
const IMPL = "rsocket-js " + require("rsocket-core/package.json").version;

function parseArgs(argv, defaults) {
  const args = Object.assign({ transport: "tcp", host: "127.0.0.1", port: 0 }, defaults);
  for (let i = 2; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    switch (flag) {
      case "--transport":
        if (value !== "tcp" && value !== "ws") throw new Error("--transport must be tcp or ws");
        args.transport = value;
        break;
      case "--host":
        args.host = value;
        break;
      case "--port":
        args.port = Number(value);
        break;
      case "--fragment":
        args.fragment = Number(value);
        break;
      case "--case-timeout":
        args.caseTimeout = Number(value) * 1000;
        break;
      default:
        throw new Error(`unknown argument ${flag}`);
    }
  }
  return args;
}

// The first routing tag of composite metadata, or null when there is no
// routing entry (or the metadata is not composite metadata at all).
function routeOf(metadata) {
  if (!metadata || metadata.length === 0) return null;
  try {
    for (const entry of decodeCompositeMetadata(metadata)) {
      if (entry.mimeType === ROUTING) {
        for (const tag of decodeRoutes(entry.content)) return tag;
        return "";
      }
    }
  } catch (e) {
    return null;
  }
  return null;
}

// rsocket-js hands out `null` for empty data; sends need a Buffer.
function buf(x) {
  if (x === null || x === undefined) return Buffer.alloc(0);
  return Buffer.isBuffer(x) ? x : Buffer.from(x);
}

// A TCP relay on 127.0.0.1 to host:port whose connections the resume case
// cuts (both sockets destroyed) to make the client resume. Resolves once
// listening; `port` is where to connect, `accepted` counts connections.
function startRelay(host, port) {
  const net = require("net");
  const live = new Set();
  const relay = { port: 0, accepted: 0 };
  const server = net.createServer((client) => {
    relay.accepted += 1;
    const upstream = net.connect({ host, port });
    const pair = [client, upstream];
    live.add(pair);
    const drop = () => {
      live.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  relay.cut = () => {
    for (const [a, b] of live) {
      a.destroy();
      b.destroy();
    }
    live.clear();
  };
  relay.close = () => {
    relay.cut();
    server.close();
  };
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      relay.port = server.address().port;
      resolve(relay);
    });
  });
}

module.exports = { COMPOSITE, ROUTING, IMPL, parseArgs, routeOf, buf, startRelay };
