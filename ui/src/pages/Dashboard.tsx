import { api, call, formatBytes, formatMib, type VmState } from "../api/client";
import { useEventRefresh, useEvents } from "../events";
import { href } from "../router";
import { ago, ErrorText, Meter, OpProgress, StateBadge, useData } from "../ui";

const STATES: VmState[] = ["running", "starting", "paused", "stopping", "stopped", "crashed"];

export function Dashboard() {
  const host = useData(() => call(api.GET("/v1/host")), [], 5000);
  const pools = useData(() => call(api.GET("/v1/storage-pools")), [], 15000);
  const vms = useData(() => call(api.GET("/v1/vms")), []);
  const ops = useData(() => call(api.GET("/v1/operations")), []);
  const { events, connected } = useEvents();
  useEventRefresh("vm/", vms.reload);
  useEventRefresh("", ops.reload);

  const h = host.data;
  const counts = new Map<string, number>();
  for (const vm of vms.data ?? []) counts.set(vm.state, (counts.get(vm.state) ?? 0) + 1);
  const recentOps = [...(ops.data ?? [])].sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, 8);

  return (
    <section aria-labelledby="dash-title">
      <h1 id="dash-title">Dashboard</h1>
      <ErrorText error={host.error ?? vms.error} />
      <div class="grid">
        <article class="card" aria-labelledby="host-title">
          <h2 id="host-title">Host {h ? <span class="muted">{h.node}</span> : null}</h2>
          {h ? (
            <>
              <p class="muted small">
                {h.hostname} · vireo {h.vireo_version} · {h.accel.chosen.toUpperCase()} · QEMU {h.qemu_version ?? "?"} · up{" "}
                {Math.round(h.uptime_s / 60)} min
              </p>
              <Meter label="CPUs" used={h.vms_running} total={Math.max(h.cpus, h.vms_running)} text={`${h.cpus} CPUs, ${h.vms_running} VMs running`} />
              <Meter
                label="Memory"
                used={h.memory_total_mib - h.memory_available_mib}
                total={h.memory_total_mib}
                text={`${formatMib(h.memory_total_mib - h.memory_available_mib)} of ${formatMib(h.memory_total_mib)} used`}
              />
              <Meter
                label="Storage"
                used={h.storage_total_bytes - h.storage_available_bytes}
                total={h.storage_total_bytes}
                text={`${formatBytes(h.storage_total_bytes - h.storage_available_bytes)} of ${formatBytes(h.storage_total_bytes)} used`}
              />
            </>
          ) : (
            <p>Loading…</p>
          )}
        </article>
        <article class="card" aria-labelledby="pools-title">
          <h2 id="pools-title">Storage pools</h2>
          {(pools.data ?? []).map((p) => (
            <Meter
              key={p.name}
              label={p.name}
              used={p.used_bytes}
              total={p.capacity_bytes}
              text={`${formatBytes(p.allocated_bytes)} in ${p.volumes} volumes · ${formatBytes(p.available_bytes)} free`}
            />
          ))}
          {pools.data?.length === 0 && <p class="muted">No storage pools.</p>}
        </article>
        <article class="card" aria-labelledby="counts-title">
          <h2 id="counts-title">Virtual machines</h2>
          <p class="big">{vms.data?.length ?? "…"}</p>
          <ul class="counts" aria-label="VMs by state">
            {STATES.map((s) => (
              <li key={s}>
                <StateBadge state={s} /> <span data-testid={`count-${s}`}>{counts.get(s) ?? 0}</span>
              </li>
            ))}
          </ul>
        </article>
      </div>
      <div class="grid two">
        <article class="card" aria-labelledby="ops-title">
          <h2 id="ops-title">
            Recent operations <a href={href("/operations")} class="small">all</a>
          </h2>
          <ul class="list">
            {recentOps.map((o) => (
              <li key={o.id}>
                <span class="mono">{o.kind}</span> <span class="muted">{o.target}</span> <StateBadge state={o.status} />
                <OpProgress op={o} />
              </li>
            ))}
            {recentOps.length === 0 && <li class="muted">None yet.</li>}
          </ul>
        </article>
        <article class="card" aria-labelledby="events-title">
          <h2 id="events-title">
            Live events <span class={`dot ${connected ? "on" : ""}`} aria-label={connected ? "connected" : "disconnected"} />
          </h2>
          <ul class="list events" aria-live="polite">
            {events.slice(0, 12).map((e) => (
              <li key={e.seq}>
                <span class="mono">{e.kind}</span> {e.target}{" "}
                <span class="muted small">
                  {eventDetail(e.data)} · {e.requestor} · {ago(e.timestamp)}
                </span>
              </li>
            ))}
            {events.length === 0 && <li class="muted">Waiting for events…</li>}
          </ul>
        </article>
      </div>
    </section>
  );
}

function eventDetail(data: unknown): string {
  if (!data || typeof data !== "object") return "";
  const d = data as Record<string, unknown>;
  const parts = ["state", "status", "kind", "stage"].filter((k) => typeof d[k] === "string").map((k) => String(d[k]));
  return parts.join(" ");
}
