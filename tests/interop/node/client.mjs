// A generic RPC client on connect-es (@connectrpc/connect-node), driven by JSON,
// for the interop tests: it calls any method of any service generated into
// ./gen/ over Connect, gRPC or gRPC-Web, HTTP/1.1 or HTTP/2, and prints one
// JSON line per thing it sees, so the test can react while a stream runs.
//
// Usage: node client.mjs '<plan JSON>'    or    node client.mjs @plan.json
// (a file for plans over the kernel's 128 KiB limit on one argument)
//
// plan: {
//   "baseUrl": "http://127.0.0.1:PORT",
//   "steps": [
//     {"id": "a", "transport": "connect" | "grpc" | "grpcweb",
//      "httpVersion": "1.1" | "2", "binary": true,          // binary: Connect only
//      "method": "grpc.health.v1.Health/Watch",             // "package.Service/Method"
//      "request": {...},                                    // protobuf JSON
//      "timeoutMs": 500,              // connect-es deadline (client and header)
//      "headers": {"grpc-timeout": "300m"},                 // extra request headers
//      "gzip": false,                 // compress the request, accept gzip
//      "cancelAfter": 2,              // abort a stream after N messages
//      "connection": "c1"},           // steps naming the same connection share one transport
//                                     // (one HTTP/2 session); otherwise each step has its own
//     {"pause": "name"},              // print {"id":"name","event":"paused"}, wait for a stdin line
//     {"group": [step, ...]}          // run these call steps concurrently
//   ]
// }
//
// Output lines, each with the step's "id":
//   {"event": "message", "message": <protobuf JSON>}
//   {"event": "headers", "headers": {...}}            response headers, when seen
//   {"event": "end", "code": 0..16, "codeName": "...", "rawMessage": "...",
//    "trailers": {...}, "metadata": {...}, "details": [{"type", "value" (base64)}],
//    "cancelledByClient": bool, "elapsedMs": n}
// and finally {"event": "done"}. Exit status 0 unless the plan itself is bad.

import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";

import { createRegistry, fromJson, toBinary, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";

const here = dirname(fileURLToPath(import.meta.url));

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function headersObject(headers) {
  const out = {};
  if (headers) {
    headers.forEach((value, key) => {
      out[key] = value;
    });
  }
  return out;
}

async function loadRegistry() {
  // Every generated *_pb.js file under gen/: the plan may name any of their services.
  const files = [];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith("_pb.js")) files.push(path);
    }
  };
  walk(join(here, "gen"));
  const descs = [];
  for (const path of files.sort()) {
    const mod = await import(pathToFileURL(path).href);
    for (const value of Object.values(mod)) {
      if (value && value.kind === "file") descs.push(value);
    }
  }
  return createRegistry(...descs);
}

function makeTransport(baseUrl, step) {
  const httpVersion = step.httpVersion ?? (step.transport === "grpc" ? "2" : "1.1");
  const common = { baseUrl, httpVersion };
  if (step.gzip) {
    Object.assign(common, { sendCompression: compressionGzip, acceptCompression: [compressionGzip], compressMinBytes: 0 });
  }
  switch (step.transport) {
    case "connect":
      return createConnectTransport({ ...common, useBinaryFormat: step.binary ?? true });
    case "grpc":
      return createGrpcTransport(common);
    case "grpcweb":
      return createGrpcWebTransport(common);
    default:
      throw new Error(`unknown transport ${step.transport}`);
  }
}

function findMethod(registry, name) {
  const [serviceName, methodName] = name.split("/");
  const service = registry.getService(serviceName);
  if (!service) throw new Error(`unknown service ${serviceName}`);
  const method = service.methods.find((m) => m.name === methodName);
  if (!method) throw new Error(`unknown method ${name}`);
  return { service, method };
}

const sharedTransports = new Map();

function transportFor(baseUrl, step) {
  if (step.connection === undefined) return makeTransport(baseUrl, step);
  if (!sharedTransports.has(step.connection)) sharedTransports.set(step.connection, makeTransport(baseUrl, step));
  return sharedTransports.get(step.connection);
}

async function runStep(registry, baseUrl, step) {
  const { id } = step;
  const { service, method } = findMethod(registry, step.method);
  const client = createClient(service, transportFor(baseUrl, step));
  const request = fromJson(method.input, step.request ?? {}, { registry });
  const abort = new AbortController();
  let trailers = {};
  const options = {
    signal: abort.signal,
    headers: step.headers ?? {},
    onHeader: (h) => emit({ id, event: "headers", headers: headersObject(h) }),
    onTrailer: (t) => {
      trailers = headersObject(t);
    },
  };
  if (step.timeoutMs !== undefined) options.timeoutMs = step.timeoutMs;
  const started = performance.now();
  const end = { id, event: "end", code: 0, codeName: "ok", rawMessage: "", cancelledByClient: false };
  let received = 0;
  try {
    if (method.methodKind === "server_streaming") {
      for await (const message of client[method.localName](request, options)) {
        received += 1;
        emit({ id, event: "message", message: toJson(method.output, message, { registry }) });
        if (step.cancelAfter !== undefined && received >= step.cancelAfter) {
          end.cancelledByClient = true;
          abort.abort();
        }
      }
    } else if (method.methodKind === "unary") {
      const message = await client[method.localName](request, options);
      received = 1;
      emit({ id, event: "message", message: toJson(method.output, message, { registry }) });
    } else {
      throw new Error(`unsupported method kind ${method.methodKind}`);
    }
  } catch (err) {
    const e = ConnectError.from(err);
    end.code = e.code;
    end.codeName = Code[e.code];
    end.rawMessage = e.rawMessage;
    end.metadata = headersObject(e.metadata);
    // Error details as connect-node decoded them (Connect JSON, or grpc-status-details-bin):
    // the message name and its bytes, re-encoded as padded base64 for the test to parse.
    end.details = e.details.map((d) => ({
      type: "desc" in d ? d.desc.typeName : d.type,
      value: Buffer.from("desc" in d ? toBinary(d.desc, d.value) : d.value).toString("base64"),
    }));
  }
  end.trailers = trailers;
  end.received = received;
  end.elapsedMs = Math.round(performance.now() - started);
  emit(end);
}

async function main() {
  const arg = process.argv[2] ?? "{}";
  const plan = JSON.parse(arg.startsWith("@") ? readFileSync(arg.slice(1), "utf8") : arg);
  const registry = await loadRegistry();
  let lines = null;
  for (const step of plan.steps ?? []) {
    if (step.pause !== undefined) {
      lines ??= createInterface({ input: process.stdin })[Symbol.asyncIterator]();
      emit({ id: step.pause, event: "paused" });
      await lines.next();
    } else if (step.group !== undefined) {
      await Promise.all(step.group.map((s) => runStep(registry, plan.baseUrl, s)));
    } else {
      await runStep(registry, plan.baseUrl, step);
    }
  }
  emit({ event: "done" });
  // HTTP/2 session managers keep idle connections open: leave now.
  process.exit(0);
}

main().catch((err) => {
  emit({ event: "fatal", error: String(err && err.stack ? err.stack : err) });
  process.exit(2);
});
