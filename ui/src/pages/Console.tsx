// Serial console: xterm.js over the console websocket (binary frames both ways; the server
// replays recent output on connect).
import { useEffect, useRef, useState } from "preact/hooks";
import { openSocket } from "../api/client";

export function Console({ name, running }: { name: string; running: boolean }) {
  const host = useRef<HTMLDivElement>(null);
  const reconnect = useRef<HTMLButtonElement>(null);
  const [status, setStatus] = useState("connecting…");
  const [session, setSession] = useState(0);

  useEffect(() => {
    if (!running || !host.current) {
      setStatus("the VM is not running");
      return;
    }
    const el = host.current;
    let closed = false;
    let cleanup = () => {};
    void import("./terminal").then(({ Terminal }) => {
      if (closed) return;
      cleanup = attach(new Terminal({ cursorBlink: true, fontSize: 14, rows: 24, cols: 100 }), el);
    });
    return () => {
      closed = true;
      cleanup();
    };
  }, [name, running, session]);

  function attach(term: import("@xterm/xterm").Terminal, el: HTMLElement): () => void {
    term.open(el);
    // Tab belongs to the guest's shell; F6 moves keyboard focus out of the terminal.
    term.attachCustomKeyEventHandler((e) => {
      if (e.type === "keydown" && e.key === "F6") {
        term.blur();
        reconnect.current?.focus();
        return false;
      }
      return true;
    });
    const ws = openSocket(`/v1/vms/${encodeURIComponent(name)}/console?history=65536`);
    const enc = new TextEncoder();
    ws.onopen = () => {
      setStatus("connected");
      term.focus();
    };
    ws.onmessage = (m) => {
      if (m.data instanceof ArrayBuffer) term.write(new Uint8Array(m.data));
      else term.write(String(m.data));
    };
    ws.onclose = (e) => setStatus(e.wasClean ? "disconnected" : "connection lost");
    ws.onerror = () => setStatus("connection failed");
    const input = term.onData((d) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
    });
    return () => {
      input.dispose();
      ws.onclose = null;
      ws.close();
      term.dispose();
    };
  }

  return (
    <div class="console">
      <div class="toolbar">
        <span role="status" data-testid="console-status">
          Console: {status}
        </span>
        <button type="button" ref={reconnect} onClick={() => setSession((s) => s + 1)}>
          Reconnect
        </button>
        <span class="muted small">Keys typed while the terminal has focus go to the guest (Tab too); F6 moves focus out of it.</span>
      </div>
      <div ref={host} class="term" aria-label={`Serial console of ${name}`} data-testid="terminal" />
    </div>
  );
}
