import { useState } from "preact/hooks";
import { api, call, formatMib, type VmInfo } from "../api/client";
import { useEventRefresh } from "../events";
import { href } from "../router";
import { ErrorText, StateBadge, useData } from "../ui";

type SortKey = "name" | "state" | "vcpus" | "memory_mib" | "created_at";

export function VmList() {
  const vms = useData(() => call(api.GET("/v1/vms")), [], 10000);
  useEventRefresh("vm/", vms.reload);
  const [filter, setFilter] = useState("");
  const [state, setState] = useState("");
  const [sort, setSort] = useState<{ key: SortKey; asc: boolean }>({ key: "name", asc: true });

  const f = filter.trim().toLowerCase();
  const rows = (vms.data ?? [])
    .filter((v) => (!state || v.state === state) && (!f || v.name.toLowerCase().includes(f) || (v.image ?? "").includes(f)))
    .sort((a, b) => compare(a, b, sort.key) * (sort.asc ? 1 : -1));

  const header = (key: SortKey, label: string) => (
    <th scope="col" aria-sort={sort.key === key ? (sort.asc ? "ascending" : "descending") : "none"}>
      <button type="button" class="link" onClick={() => setSort({ key, asc: sort.key === key ? !sort.asc : true })}>
        {label} {sort.key === key ? (sort.asc ? "▲" : "▼") : ""}
      </button>
    </th>
  );

  return (
    <section aria-labelledby="vms-title">
      <div class="head">
        <h1 id="vms-title">Virtual machines</h1>
        <a class="button primary" href={href("/vms/new")}>
          Create VM
        </a>
      </div>
      <div class="toolbar">
        <label>
          Filter <input type="search" value={filter} onInput={(e) => setFilter((e.target as HTMLInputElement).value)} placeholder="name or image" />
        </label>
        <label>
          State{" "}
          <select value={state} onChange={(e) => setState((e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            {["running", "starting", "paused", "stopping", "stopped", "crashed"].map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </label>
      </div>
      <ErrorText error={vms.error} />
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              {header("name", "Name")}
              {header("state", "State")}
              {header("vcpus", "vCPUs")}
              {header("memory_mib", "Memory")}
              <th scope="col">Image</th>
              <th scope="col">Addresses</th>
              {header("created_at", "Created")}
            </tr>
          </thead>
          <tbody>
            {rows.map((v) => (
              <tr key={v.uuid} data-vm={v.name}>
                <td>
                  <a href={href(`/vms/${encodeURIComponent(v.name)}`)}>{v.name}</a>
                  {v.template && <span class="badge">template</span>}
                </td>
                <td>
                  <StateBadge state={v.state} />
                  {v.guest_ready && <span class="badge ok" title="guest agent answers">agent</span>}
                </td>
                <td>{v.vcpus}</td>
                <td>{formatMib(v.memory_mib)}</td>
                <td>{v.image ?? v.template_source ?? ""}</td>
                <td class="mono small">{v.state === "running" || v.state === "paused" ? v.nics.flatMap((n) => n.addresses ?? []).join(", ") : ""}</td>
                <td>{new Date(v.created_at).toLocaleString()}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {vms.data && rows.length === 0 && <p class="muted">No VMs match.</p>}
      </div>
    </section>
  );
}

function compare(a: VmInfo, b: VmInfo, key: SortKey): number {
  const x = a[key];
  const y = b[key];
  if (typeof x === "number" && typeof y === "number") return x - y;
  return String(x).localeCompare(String(y));
}
