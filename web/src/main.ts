// The page: device key, login by email code, signed commands with verified
// answers, a live verified event stream, a transport switch, session revoke.
// Plain DOM; every element the end-to-end test reads has an id or data-* state.

import { loadOrCreateDeviceKey, type DeviceKey } from "./device";
import {
  codeName,
  confirmEmailCode,
  GatewayClient,
  GatewayKeys,
  sendEmailCode,
  type TransportKind,
  type VerifiedEvent,
  type VerifiedResponse,
} from "./gateway";
import { keyIdFor, rawPublicKey, toBase64 } from "./signing";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from index.html`);
  return el as T;
};

const params = new URLSearchParams(location.search);

interface State {
  device: DeviceKey | null;
  publicKeyB64: string;
  challengeId: string;
  client: GatewayClient | null;
  keys: GatewayKeys | null;
  stream: AbortController | null;
}

const state: State = { device: null, publicKeyB64: "", challengeId: "", client: null, keys: null, stream: null };

function gatewayUrl(): string {
  const value = $<HTMLInputElement>("gateway").value.trim().replace(/\/+$/, "");
  return value || location.origin;
}

function transport(): TransportKind {
  return ($<HTMLInputElement>("transport-grpc-web").checked ? "grpc-web" : "connect");
}

function setStatus(id: string, message: string, kind: "ok" | "error" | "info" = "info"): void {
  const el = $(id);
  el.textContent = message;
  el.dataset.kind = kind;
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function pretty(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function showResult(messageType: string, res: VerifiedResponse | null, error?: unknown): void {
  const article = document.createElement("article");
  article.className = "result";
  article.dataset.messageType = messageType;
  const head = document.createElement("header");
  const body = document.createElement("pre");
  if (res) {
    article.dataset.resultCode = res.resultCode;
    article.dataset.verified = "true";
    head.innerHTML = `<b></b> <span class="code"></span> <span class="badge ok">✓ signature verified (key <code></code>)</span>`;
    head.querySelector("b")!.textContent = messageType;
    head.querySelector(".code")!.textContent = res.resultCode;
    head.querySelector("code")!.textContent = res.keyId;
    body.textContent = pretty(res.payload);
  } else {
    article.dataset.verified = "false";
    head.innerHTML = `<b></b> <span class="badge error">error</span>`;
    head.querySelector("b")!.textContent = messageType;
    body.textContent = describe(error);
  }
  article.append(head, body);
  $("results").prepend(article);
}

function showEvent(ev: VerifiedEvent): void {
  const li = document.createElement("li");
  li.className = "event";
  li.dataset.eventType = ev.eventType;
  li.dataset.verified = "true";
  const time = new Date(Number(ev.timestampMs)).toLocaleTimeString();
  li.innerHTML = `<span class="time"></span> <b></b> <span class="badge ok">✓ verified</span> <code class="payload"></code>`;
  li.querySelector(".time")!.textContent = time;
  li.querySelector("b")!.textContent = ev.eventType;
  li.querySelector(".payload")!.textContent = JSON.stringify(ev.payload);
  $("event-list").prepend(li);
}

function setStream(kind: "idle" | "connecting" | "open" | "ended", message: string): void {
  const el = $("stream-status");
  el.dataset.state = kind;
  el.textContent = message;
}

async function openStream(): Promise<void> {
  const client = state.client;
  if (!client) return;
  state.stream?.abort();
  const controller = new AbortController();
  state.stream = controller;
  setStream("connecting", `connecting over ${client.transport}…`);
  let ended: string;
  try {
    const err = await client.subscribe((ev) => {
      if (ev.eventType === "gateway.server_time") setStream("open", `stream open over ${client.transport}`);
      showEvent(ev);
    }, controller.signal);
    if (controller.signal.aborted) return; // replaced by a new stream (transport switch)
    ended = err ? `stream ended: ${codeName(err.code)}${err.rawMessage ? ` — ${err.rawMessage}` : ""}` : "stream ended";
  } catch (e) {
    ended = `stream ended: verification failed — ${describe(e)}`;
  }
  if (state.stream === controller) {
    state.stream = null;
    setStream("ended", ended);
  }
}

function connect(): void {
  const current = state.client;
  if (!current || !state.device || !state.keys) return;
  state.client = new GatewayClient(gatewayUrl(), transport(), state.device.privateKey, current.session, state.keys);
  $("session-transport").textContent = state.client.transport;
}

async function run(messageType: string, payload?: unknown): Promise<void> {
  const client = state.client;
  if (!client) return;
  try {
    showResult(messageType, await client.execute(messageType, payload));
  } catch (e) {
    showResult(messageType, null, e);
  }
}

async function init(): Promise<void> {
  const gateway = params.get("gateway");
  $<HTMLInputElement>("gateway").value = gateway ?? location.origin;
  if (params.get("transport") === "grpc-web") $<HTMLInputElement>("transport-grpc-web").checked = true;
  $("page-origin").textContent = location.origin;

  try {
    const { key, created } = await loadOrCreateDeviceKey();
    state.device = key;
    const raw = await rawPublicKey(key.publicKey);
    state.publicKeyB64 = toBase64(raw);
    $("device-key").textContent = `${await keyIdFor(raw)} (${created ? "new" : "from IndexedDB"}, private half not extractable)`;
    $("device-key").dataset.ready = "true";
  } catch (e) {
    setStatus("login-status", `no Ed25519 in this browser's WebCrypto: ${describe(e)}`, "error");
    return;
  }

  $("send-code").addEventListener("click", async () => {
    try {
      state.challengeId = await sendEmailCode(gatewayUrl(), $<HTMLInputElement>("email").value.trim());
      setStatus("login-status", "code sent (dev mode accepts 000000)", "ok");
    } catch (e) {
      setStatus("login-status", `send failed: ${describe(e)}`, "error");
    }
  });

  $("confirm").addEventListener("click", async () => {
    try {
      const base = gatewayUrl();
      const session = await confirmEmailCode(base, state.challengeId, $<HTMLInputElement>("code").value.trim(),
        state.publicKeyB64);
      state.keys = new GatewayKeys(base);
      state.client = new GatewayClient(base, transport(), state.device!.privateKey, session, state.keys);
      $("session-id").textContent = session.deviceSessionId;
      $("user-id").textContent = session.userId;
      $("session-transport").textContent = state.client.transport;
      $("session").hidden = false;
      $("session").dataset.loggedIn = "true";
      setStatus("login-status", "logged in", "ok");
      void openStream();
    } catch (e) {
      setStatus("login-status", `login failed: ${describe(e)}`, "error");
    }
  });

  for (const id of ["transport-connect", "transport-grpc-web"]) {
    $(id).addEventListener("change", () => {
      if (!state.client) return;
      connect();
      void openStream();
    });
  }

  $("profile-get").addEventListener("click", () => void run("user.profile.get"));
  $("notes-list").addEventListener("click", () => void run("user.notes.list"));
  $("note-create").addEventListener("click", () =>
    void run("user.notes.create", { text: $<HTMLInputElement>("note-text").value }));
  $("revoke").addEventListener("click", () => {
    const client = state.client;
    if (client) void run("user.sessions.revoke", { device_session_id: client.session.deviceSessionId });
  });
  $("app").dataset.ready = "true";
}

void init();
