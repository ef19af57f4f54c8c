// One events websocket for the whole app: keeps the most recent events and tells subscribers
// about new ones (pages refresh the objects an event names). Reconnects with backoff.
import { useEffect, useState } from "preact/hooks";
import { openSocket, type ApiEvent } from "./api/client";

const KEEP = 50;
let recent: ApiEvent[] = [];
let connected = false;
const listeners = new Set<() => void>();
let socket: WebSocket | null = null;
let retry: number | undefined;
let stopped = true;

function notify() {
  listeners.forEach((f) => f());
}

function connect(delayMs: number) {
  if (stopped) return;
  const ws = openSocket("/v1/events");
  socket = ws;
  ws.onopen = () => {
    connected = true;
    notify();
  };
  ws.onmessage = (m) => {
    if (typeof m.data !== "string") return;
    try {
      const ev = JSON.parse(m.data) as ApiEvent;
      recent = [ev, ...recent].slice(0, KEEP);
      notify();
    } catch {
      // Not an event: ignore rather than break the stream.
    }
  };
  ws.onclose = () => {
    connected = false;
    notify();
    if (socket === ws && !stopped) {
      retry = window.setTimeout(() => connect(Math.min(delayMs * 2, 10000)), delayMs);
    }
  };
}

export function startEvents(): void {
  if (!stopped) return;
  stopped = false;
  connect(500);
}

export function stopEvents(): void {
  stopped = true;
  window.clearTimeout(retry);
  socket?.close();
  socket = null;
  recent = [];
  connected = false;
}

/** Re-renders on every event; returns the recent events (newest first) and the link state. */
export function useEvents(): { events: ApiEvent[]; connected: boolean } {
  const [, setTick] = useState(0);
  useEffect(() => {
    const f = () => setTick((t) => t + 1);
    listeners.add(f);
    return () => listeners.delete(f);
  }, []);
  return { events: recent, connected };
}

/** Calls `f` (debounced) whenever an event arrives whose target starts with `prefix`. */
export function useEventRefresh(prefix: string, f: () => void): void {
  useEffect(() => {
    let timer: number | undefined;
    let seen = recent[0]?.seq ?? -1;
    const l = () => {
      const fresh = recent.filter((e) => e.seq > seen);
      if (recent[0]) seen = recent[0].seq;
      if (fresh.some((e) => e.target.startsWith(prefix) || e.kind === "operation")) {
        window.clearTimeout(timer);
        timer = window.setTimeout(f, 150);
      }
    };
    listeners.add(l);
    return () => {
      listeners.delete(l);
      window.clearTimeout(timer);
    };
  }, [prefix, f]);
}
