// Signing inputs of PROTOCOL.md section 2, byte for byte the same as
// gatewayd/signing.py (tests/vectors/signing.json holds both sides to it).
//
// frame(p1, ..., pn): each part as a 4-byte big-endian length then its bytes;
// strings UTF-8, integers decimal ASCII, hashes the raw 32 bytes.
// Only WebCrypto is used, so the same module runs in browsers and in Node.

export const REQUEST_CONTEXT = "gatewayd/v1/request";
export const RESPONSE_CONTEXT = "gatewayd/v1/response";
export const EVENT_CONTEXT = "gatewayd/v1/event";
export const ED25519 = { name: "Ed25519" } as const;

const utf8 = new TextEncoder();

type Part = string | number | bigint | Uint8Array;

function bytesOf(part: Part): Uint8Array {
  if (part instanceof Uint8Array) return part;
  if (typeof part === "string") return utf8.encode(part);
  // Integers: decimal ASCII, no sign or leading zeros (the protocol's integers are never negative).
  return utf8.encode(BigInt(part).toString(10));
}

/** Length-prefix and concatenate the parts. */
export function frame(...parts: Part[]): Uint8Array {
  const encoded = parts.map(bytesOf);
  const total = encoded.reduce((n, p) => n + 4 + p.length, 0);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const p of encoded) {
    view.setUint32(at, p.length, false);
    out.set(p, at + 4);
    at += 4 + p.length;
  }
  return out;
}

export interface RequestFields {
  protocolVersion: number;
  deviceSessionId: string;
  requestId: string;
  timestampMs: bigint | number;
  messageType: string;
  payloadHash: Uint8Array;
}

export interface ResponseFields {
  protocolVersion: number;
  deviceSessionId: string; // the caller's: not repeated in the response envelope
  requestId: string;
  timestampMs: bigint | number;
  resultCode: string;
  payloadHash: Uint8Array;
  keyId: string;
}

export interface EventFields {
  eventType: string;
  eventId: string;
  timestampMs: bigint | number;
  payloadHash: Uint8Array;
  keyId: string;
}

/** The bytes a device signs for one request. */
export function requestSigningInput(r: RequestFields): Uint8Array {
  return frame(
    REQUEST_CONTEXT, r.protocolVersion, r.deviceSessionId, r.requestId, r.timestampMs, r.messageType,
    r.payloadHash,
  );
}

/** The bytes the gateway signs for one response. */
export function responseSigningInput(r: ResponseFields): Uint8Array {
  return frame(
    RESPONSE_CONTEXT, r.protocolVersion, r.deviceSessionId, r.requestId, r.timestampMs, r.resultCode,
    r.payloadHash, r.keyId,
  );
}

/** The bytes the gateway signs once per event. */
export function eventSigningInput(e: EventFields): Uint8Array {
  return frame(EVENT_CONTEXT, e.eventType, e.eventId, e.timestampMs, e.payloadHash, e.keyId);
}

// WebCrypto wants BufferSource; a copy keeps views of larger buffers (protobuf fields) exact.
function buf(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer as ArrayBuffer;
}

export async function sha256(data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", buf(data)));
}

export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Lowercase hex of the first 8 bytes of SHA-256 of the raw 32-byte public key. */
export async function keyIdFor(publicKey: Uint8Array): Promise<string> {
  return toHex((await sha256(publicKey)).slice(0, 8));
}

/** The 64-byte Ed25519 signature of ``message`` by ``key`` (a private CryptoKey). */
export async function sign(key: CryptoKey, message: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign(ED25519, key, buf(message)));
}

/** The raw 32-byte public key of an Ed25519 CryptoKey (public keys are always exportable). */
export async function rawPublicKey(key: CryptoKey): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.exportKey("raw", key));
}

export async function importPublicKey(raw: Uint8Array): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", buf(raw), ED25519, false, ["verify"]);
}

/** True when ``signature`` is a valid Ed25519 signature of ``message``; never throws. */
export async function verify(key: CryptoKey, message: Uint8Array, signature: Uint8Array): Promise<boolean> {
  if (signature.length !== 64) return false;
  try {
    return await crypto.subtle.verify(ED25519, key, buf(signature), buf(message));
  } catch {
    return false;
  }
}

const PKCS8_ED25519_PREFIX = fromHex("302e020100300506032b657004220420");

/** A private key from a raw 32-byte seed (test vectors only: real device keys are generated). */
export async function importSeed(seed: Uint8Array, extractable = false): Promise<CryptoKey> {
  const pkcs8 = new Uint8Array(PKCS8_ED25519_PREFIX.length + seed.length);
  pkcs8.set(PKCS8_ED25519_PREFIX);
  pkcs8.set(seed, PKCS8_ED25519_PREFIX.length);
  return crypto.subtle.importKey("pkcs8", buf(pkcs8), ED25519, extractable, ["sign"]);
}
