// web/src/signing.ts against tests/vectors/signing.json (made from gatewayd/signing.py):
// identical signing-input bytes, identical Ed25519 signatures from the same seed, the
// same key_id, and verification that accepts the vectors and rejects a flipped bit.
// Run: node --test web/test/
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { importTs } from "./load-ts.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const vectors = JSON.parse(readFileSync(join(root, "tests", "vectors", "signing.json"), "utf8"));
const s = await importTs(join(root, "web", "src", "signing.ts"));

const privateKey = await s.importSeed(s.fromHex(vectors.seed_hex));
const publicKey = await s.importPublicKey(s.fromHex(vectors.public_key_hex));

async function checkSigned(v, message) {
  assert.equal(s.toHex(await s.sha256(s.fromHex(v.payload_hex))), v.payload_hash_hex, `${v.name}: payload hash`);
  assert.equal(s.toHex(message), v.signing_input_hex, `${v.name}: signing input`);
  assert.equal(s.toHex(await s.sign(privateKey, message)), v.signature_hex, `${v.name}: signature`);
  assert.ok(await s.verify(publicKey, message, s.fromHex(v.signature_hex)), `${v.name}: verifies`);
  const flipped = s.fromHex(v.signature_hex);
  flipped[0] ^= 1;
  assert.equal(await s.verify(publicKey, message, flipped), false, `${v.name}: flipped bit rejected`);
}

test("key id and base64 of the vectors' public key", async () => {
  const raw = s.fromHex(vectors.public_key_hex);
  assert.equal(await s.keyIdFor(raw), vectors.key_id);
  assert.equal(s.toBase64(raw), vectors.public_key_b64);
  assert.equal(s.toHex(s.fromBase64(vectors.public_key_b64)), vectors.public_key_hex);
  const derived = await s.importSeed(s.fromHex(vectors.seed_hex), true);
  const jwk = await crypto.subtle.exportKey("jwk", derived);
  assert.equal(Buffer.from(jwk.x, "base64url").toString("hex"), vectors.public_key_hex);
});

test("request signing inputs and signatures", async () => {
  assert.ok(vectors.requests.length >= 3);
  for (const v of vectors.requests) {
    const message = s.requestSigningInput({
      protocolVersion: v.protocol_version,
      deviceSessionId: v.device_session_id,
      requestId: v.request_id,
      timestampMs: BigInt(v.timestamp_ms),
      messageType: v.message_type,
      payloadHash: s.fromHex(v.payload_hash_hex),
    });
    await checkSigned(v, message);
  }
});

test("response signing inputs and signatures", async () => {
  assert.ok(vectors.responses.length >= 3);
  for (const v of vectors.responses) {
    const message = s.responseSigningInput({
      protocolVersion: v.protocol_version,
      deviceSessionId: v.device_session_id,
      requestId: v.request_id,
      timestampMs: BigInt(v.timestamp_ms),
      resultCode: v.result_code,
      payloadHash: s.fromHex(v.payload_hash_hex),
      keyId: v.key_id,
    });
    await checkSigned(v, message);
  }
});

test("event signing inputs and signatures", async () => {
  assert.ok(vectors.events.length >= 3);
  for (const v of vectors.events) {
    const message = s.eventSigningInput({
      eventType: v.event_type,
      eventId: v.event_id,
      timestampMs: BigInt(v.timestamp_ms),
      payloadHash: s.fromHex(v.payload_hash_hex),
      keyId: v.key_id,
    });
    await checkSigned(v, message);
  }
});

test("a JavaScript number timestamp frames like its bigint", () => {
  const a = s.frame("x", 1700000000000);
  const b = s.frame("x", 1700000000000n);
  assert.equal(s.toHex(a), s.toHex(b));
  assert.equal(s.toHex(s.frame()), "");
  assert.equal(s.toHex(s.frame("")), "00000000");
});
