// A gatewayd client for browsers: the public REST calls (login, gateway keys)
// and the two RPCs over Connect or gRPC-Web (connect-web), every request signed
// by the device key and every response and event verified against the gateway's
// published keys before anyone sees it (PROTOCOL.md sections 2 and 4).

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

import {
  type ExecuteCommandResponse,
  Gateway,
  type GatewayEvent,
  ExecuteCommandRequestSchema,
  RequestEnvelopeSchema,
  SubscribeEventsRequestSchema,
} from "./gen/gateway/v1/gateway_pb";
import {
  equalBytes,
  eventSigningInput,
  fromBase64,
  importPublicKey,
  requestSigningInput,
  responseSigningInput,
  sha256,
  sign,
  verify,
} from "./signing";

export type TransportKind = "connect" | "grpc-web";
export const PROTOCOL_VERSION = 1;
export const SUBSCRIBE = "gateway.subscribe";

const utf8 = new TextEncoder();
const text = new TextDecoder();

/** A response or event that failed verification: it is never shown as data. */
export class VerificationError extends Error {}

/** A public REST call answered with an error (``{"error": {"code", "message"}}``). */
export class PublicApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(`${status} ${code}: ${message}`);
  }
}

/** The protocol's name for a code (``FAILED_PRECONDITION``), from connect-es's ``Code`` enum. */
export function codeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function parseJson(bytes: Uint8Array): unknown {
  const body = text.decode(bytes);
  if (body === "") return null;
  try {
    return JSON.parse(body);
  } catch {
    return body;
  }
}

async function postJson(url: string, body: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (!res.ok) {
    const err = (data.error ?? {}) as { code?: string; message?: string };
    throw new PublicApiError(res.status, err.code ?? "unknown", err.message ?? res.statusText);
  }
  return data;
}

/** The gateway's published keys, fetched once and again when a response names an unknown key. */
export class GatewayKeys {
  private keys = new Map<string, CryptoKey>();
  private fetched: Promise<void> | null = null;

  constructor(private readonly baseUrl: string) {}

  private async refresh(): Promise<void> {
    const res = await fetch(`${this.baseUrl}/api/v1/public/gateway-keys`);
    if (!res.ok) throw new VerificationError(`gateway-keys answered ${res.status}`);
    const data = (await res.json()) as { keys: { key_id: string; public_key: string }[] };
    const keys = new Map<string, CryptoKey>();
    for (const k of data.keys) keys.set(k.key_id, await importPublicKey(fromBase64(k.public_key)));
    this.keys = keys;
  }

  async get(keyId: string): Promise<CryptoKey> {
    if (this.fetched === null) this.fetched = this.refresh();
    await this.fetched;
    if (!this.keys.has(keyId)) {
      // Rotation: a key published after we looked. One refetch, then it is an error.
      this.fetched = this.refresh();
      await this.fetched;
    }
    const key = this.keys.get(keyId);
    if (!key) throw new VerificationError(`unknown gateway key_id ${keyId}`);
    return key;
  }

  ids(): string[] {
    return [...this.keys.keys()];
  }
}

export interface Session {
  deviceSessionId: string;
  userId: string;
}

/** Public REST: ``send-email-code`` then ``confirm-email-code`` with the device's public key. */
export async function sendEmailCode(baseUrl: string, email: string): Promise<string> {
  const data = await postJson(`${baseUrl}/api/v1/public/auth/send-email-code`, { email });
  return String(data.challenge_id);
}

export async function confirmEmailCode(
  baseUrl: string, challengeId: string, code: string, clientPublicKey: string,
): Promise<Session> {
  const data = await postJson(`${baseUrl}/api/v1/public/auth/confirm-email-code`, {
    challenge_id: challengeId,
    code,
    client_public_key: clientPublicKey,
  });
  return { deviceSessionId: String(data.device_session_id), userId: String(data.user_id) };
}

export function makeTransport(kind: TransportKind, baseUrl: string): Transport {
  return kind === "grpc-web"
    ? createGrpcWebTransport({ baseUrl, useBinaryFormat: true })
    : createConnectTransport({ baseUrl, useBinaryFormat: true });
}

export interface VerifiedResponse {
  requestId: string;
  resultCode: string;
  timestampMs: bigint;
  keyId: string;
  payload: unknown;
}

export interface VerifiedEvent {
  eventType: string;
  eventId: string;
  timestampMs: bigint;
  keyId: string;
  payload: unknown;
}

/** One logged-in device session talking to one gateway over one transport. */
export class GatewayClient {
  private readonly client: Client<typeof Gateway>;

  constructor(
    readonly baseUrl: string,
    readonly transport: TransportKind,
    private readonly deviceKey: CryptoKey,
    readonly session: Session,
    private readonly keys: GatewayKeys,
  ) {
    this.client = createClient(Gateway, makeTransport(transport, baseUrl));
  }

  private async envelope(messageType: string, payload: Uint8Array) {
    const fields = {
      protocolVersion: PROTOCOL_VERSION,
      deviceSessionId: this.session.deviceSessionId,
      requestId: crypto.randomUUID(),
      timestampMs: BigInt(Date.now()),
      messageType,
      payloadHash: await sha256(payload),
    };
    const signature = await sign(this.deviceKey, requestSigningInput(fields));
    return { envelope: create(RequestEnvelopeSchema, fields), signature };
  }

  /** Run one command; resolves only with a response whose hash and signature check out. */
  async execute(messageType: string, payload?: unknown): Promise<VerifiedResponse> {
    const body = payload === undefined ? new Uint8Array() : utf8.encode(JSON.stringify(payload));
    const { envelope, signature } = await this.envelope(messageType, body);
    const req = create(ExecuteCommandRequestSchema, { envelope, payloadBytes: body, signature });
    const res = await this.client.executeCommand(req);
    return this.verifyResponse(envelope.requestId, res);
  }

  private async verifyResponse(requestId: string, res: ExecuteCommandResponse): Promise<VerifiedResponse> {
    const env = res.envelope;
    if (!env) throw new VerificationError("response has no envelope");
    if (env.requestId !== requestId) throw new VerificationError("response answers another request_id");
    if (!equalBytes(await sha256(res.payloadBytes), env.payloadHash)) {
      throw new VerificationError("response payload_hash does not match its payload");
    }
    const key = await this.keys.get(env.keyId);
    const message = responseSigningInput({
      protocolVersion: env.protocolVersion,
      deviceSessionId: this.session.deviceSessionId,
      requestId: env.requestId,
      timestampMs: env.timestampMs,
      resultCode: env.resultCode,
      payloadHash: env.payloadHash,
      keyId: env.keyId,
    });
    if (!(await verify(key, message, res.signature))) throw new VerificationError("bad response signature");
    return {
      requestId: env.requestId,
      resultCode: env.resultCode,
      timestampMs: env.timestampMs,
      keyId: env.keyId,
      payload: parseJson(res.payloadBytes),
    };
  }

  async verifyEvent(ev: GatewayEvent): Promise<VerifiedEvent> {
    if (!equalBytes(await sha256(ev.payloadBytes), ev.payloadHash)) {
      throw new VerificationError(`event ${ev.eventId}: payload_hash does not match its payload`);
    }
    const key = await this.keys.get(ev.keyId);
    const message = eventSigningInput(ev);
    if (!(await verify(key, message, ev.signature))) {
      throw new VerificationError(`event ${ev.eventId}: bad signature`);
    }
    return {
      eventType: ev.eventType,
      eventId: ev.eventId,
      timestampMs: ev.timestampMs,
      keyId: ev.keyId,
      payload: parseJson(ev.payloadBytes),
    };
  }

  /**
   * Hold a SubscribeEvents stream open, calling ``onEvent`` with each verified event in order.
   * Resolves when the stream ends: with the server's error (revoked: FAILED_PRECONDITION),
   * or ``null`` when it ended without one; aborting ``signal`` ends it as CANCELED.
   */
  async subscribe(onEvent: (ev: VerifiedEvent) => void, signal: AbortSignal): Promise<ConnectError | null> {
    const { envelope, signature } = await this.envelope(SUBSCRIBE, new Uint8Array());
    const req = create(SubscribeEventsRequestSchema, { envelope, signature });
    try {
      for await (const ev of this.client.subscribeEvents(req, { signal })) {
        onEvent(await this.verifyEvent(ev));
      }
      return null;
    } catch (e) {
      if (e instanceof VerificationError) throw e;
      return ConnectError.from(e);
    }
  }
}
