// Typed API client: the types come from openapi/vireo.json (generated into schema.d.ts by
// `npm run gen:api`); openapi-fetch checks paths, parameters and bodies against them.
// The token lives in sessionStorage only (gone when the tab closes) and is sent as a bearer
// header; websockets carry it as the subprotocol `vireo.token.<token>` because browsers
// cannot set headers on them (see docs/api.md).
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type VmInfo = Schemas["VmInfo"];
export type VmState = Schemas["VmState"];
export type Operation = Schemas["Operation"];
export type ApiEvent = Schemas["Event"];

const TOKEN_KEY = "vireo.token";

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Called when the daemon answers 401 (token revoked or wrong). */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void): void {
  onUnauthorized = f;
}

export const api = createClient<paths>({ baseUrl: location.origin });
api.use({
  onRequest({ request }) {
    const t = getToken();
    if (t) request.headers.set("Authorization", `Bearer ${t}`);
    return request;
  },
  onResponse({ response }) {
    if (response.status === 401) onUnauthorized();
    return response;
  },
});

/** An API error, as the daemon's ErrorBody describes it. */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field: string | null,
  ) {
    super(message);
  }
}

type Result<T> = { data?: T; error?: unknown; response: Response };

/** Returns the data of a successful call, or throws an ApiFailure with the API's message. */
export async function call<T>(p: Promise<Result<T>>): Promise<T> {
  let r: Result<T>;
  try {
    r = await p;
  } catch (e) {
    throw new ApiFailure(0, "unavailable", `cannot reach vireod: ${String(e)}`, null);
  }
  if (r.response.ok) return r.data as T;
  const body = r.error as Partial<Schemas["ErrorBody"]> | undefined;
  const detail = body?.error;
  throw new ApiFailure(
    r.response.status,
    detail?.code ?? "internal",
    detail?.message ?? `HTTP ${r.response.status}`,
    detail?.field ?? null,
  );
}

/** Waits for an operation to finish (long-polling the wait endpoint); throws if it failed. */
export async function waitOperation(op: Operation, timeoutS = 600, onUpdate?: (op: Operation) => void): Promise<Operation> {
  const deadline = Date.now() + timeoutS * 1000;
  let cur = op;
  while (cur.status === "running" && Date.now() < deadline) {
    // Short waits so progress shows while the operation runs.
    cur = await call(
      api.GET("/v1/operations/{id}/wait", { params: { path: { id: cur.id }, query: { timeout: 1 } } }),
    );
    onUpdate?.(cur);
  }
  if (cur.status === "failed" || cur.status === "cancelled") {
    throw new ApiFailure(0, "conflict", cur.error ?? `operation ${cur.kind} ${cur.status}`, null);
  }
  return cur;
}

/** Opens an authenticated websocket to an API path (e.g. `/v1/events`). */
export function openSocket(path: string): WebSocket {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = ["vireo"];
  const t = getToken();
  if (t) protocols.push(`vireo.token.${t}`);
  const ws = new WebSocket(url, protocols);
  ws.binaryType = "arraybuffer";
  return ws;
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatMib(mib: number): string {
  return formatBytes(mib * 1024 * 1024);
}
