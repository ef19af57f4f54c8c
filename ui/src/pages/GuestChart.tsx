// Live CPU/memory of one guest. The API has no per-VM metrics (GET /metrics has only counts
// of VMs and operations by state), so this samples the guest's own /proc/stat and
// /proc/meminfo through the guest agent (POST /v1/vms/{name}/exec) every few seconds while
// the tab is open.
import { useEffect, useState } from "preact/hooks";
import { api, call } from "../api/client";

const PERIOD_MS = 3000;
const POINTS = 40;

interface Sample {
  cpuPct: number;
  memPct: number;
  memUsedMib: number;
  memTotalMib: number;
}

/** Parses `cat /proc/stat /proc/meminfo` output: total and idle jiffies, memory in KiB. */
export function parseProc(text: string): { busy: number; total: number; memTotalKib: number; memAvailKib: number } | null {
  const cpu = text.split("\n").find((l) => l.startsWith("cpu "));
  const kib = (key: string) => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text);
    return m ? Number(m[1]) : NaN;
  };
  if (!cpu) return null;
  const f = cpu.trim().split(/\s+/).slice(1).map(Number);
  if (f.length < 4 || f.some((x) => !Number.isFinite(x))) return null;
  const total = f.reduce((a, b) => a + b, 0);
  const idle = f[3] + (f[4] ?? 0);
  const memTotalKib = kib("MemTotal");
  const memAvailKib = Number.isFinite(kib("MemAvailable")) ? kib("MemAvailable") : kib("MemFree");
  if (!Number.isFinite(memTotalKib) || !Number.isFinite(memAvailKib)) return null;
  return { busy: total - idle, total, memTotalKib, memAvailKib };
}

export function GuestChart({ name, active }: { name: string; active: boolean }) {
  const [samples, setSamples] = useState<Sample[]>([]);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    if (!active) return;
    let prev: { busy: number; total: number } | null = null;
    let stopped = false;
    let timer: number | undefined;
    const tick = async () => {
      try {
        const r = await call(
          api.POST("/v1/vms/{name}/exec", { params: { path: { name } }, body: { command: ["cat", "/proc/stat", "/proc/meminfo"], timeout_s: 5 } }),
        );
        const p = parseProc(atob(r.stdout_base64));
        if (p && !stopped) {
          if (prev && p.total > prev.total) {
            const s: Sample = {
              cpuPct: (100 * (p.busy - prev.busy)) / (p.total - prev.total),
              memPct: (100 * (p.memTotalKib - p.memAvailKib)) / p.memTotalKib,
              memUsedMib: (p.memTotalKib - p.memAvailKib) / 1024,
              memTotalMib: p.memTotalKib / 1024,
            };
            setSamples((old) => [...old, s].slice(-POINTS));
          }
          prev = p;
          setError(null);
        }
      } catch (e) {
        if (!stopped) setError(e instanceof Error ? e.message : String(e));
      }
      if (!stopped) timer = window.setTimeout(tick, PERIOD_MS);
    };
    void tick();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, [name, active]);

  if (!active) return <p class="muted">The live chart needs a running VM whose guest agent answers.</p>;
  const last = samples[samples.length - 1];
  return (
    <div>
      <p class="muted small">Sampled from the guest every {PERIOD_MS / 1000} s through its agent (vireod has no per-VM metrics yet).</p>
      {error && <p class="error" role="alert">{error}</p>}
      <svg class="chart" viewBox={`0 0 ${POINTS} 100`} preserveAspectRatio="none" role="img" aria-label={last ? `CPU ${last.cpuPct.toFixed(0)}%, memory ${last.memPct.toFixed(0)}%` : "collecting samples"}>
        <polyline class="cpu" points={samples.map((s, i) => `${i},${100 - s.cpuPct}`).join(" ")} />
        <polyline class="mem" points={samples.map((s, i) => `${i},${100 - s.memPct}`).join(" ")} />
      </svg>
      <p>
        <span class="legend cpu">CPU {last ? `${last.cpuPct.toFixed(1)}%` : "…"}</span>{" "}
        <span class="legend mem">Memory {last ? `${last.memUsedMib.toFixed(0)} / ${last.memTotalMib.toFixed(0)} MiB` : "…"}</span>
      </p>
    </div>
  );
}
