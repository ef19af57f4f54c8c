// A VM's disks and NICs: attach/detach custom volumes (POST/DELETE /v1/vms/{name}/disks…,
// operations, hot-plugged when the VM runs) and add/remove NICs on managed networks
// (POST/DELETE /v1/vms/{name}/nics…). The API decides what is allowed (e.g. only custom
// volumes detach, NICs change only when the VM is stopped or running); its messages are shown.
import { useState } from "preact/hooks";
import { api, call, formatBytes, waitOperation, type Operation, type Schemas, type VmInfo } from "../api/client";
import { href } from "../router";
import { Confirm, ErrorText, FieldError, FormDialog, invalidProps, isFieldError, useData } from "../ui";

type Volume = Schemas["VolumeInfo"];

/** Every pool's volumes (a host has a handful of pools; one request each). */
async function allVolumes(): Promise<Volume[]> {
  const pools = await call(api.GET("/v1/storage-pools"));
  const lists = await Promise.all(pools.map((p) => call(api.GET("/v1/storage-pools/{pool}/volumes", { params: { path: { pool: p.name } } }))));
  return lists.flat();
}

export function VmHardware({ vm, onChange }: { vm: VmInfo; onChange: () => void }) {
  const name = vm.name;
  const volumes = useData(allVolumes, [name]);
  const nics = useData(() => call(api.GET("/v1/vms/{name}/nics", { params: { path: { name } } })), [name]);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [pending, setPending] = useState<null | { kind: "disk" | "nic"; name: string }>(null);
  const [attaching, setAttaching] = useState(false);
  const [adding, setAdding] = useState(false);

  // Which volume backs each disk of this VM (custom volumes can be detached).
  const byDisk = new Map<string, Volume>();
  for (const v of volumes.data ?? []) {
    if (v.attached_to && v.attached_to.vm === name && v.attached_to.project === vm.project) byDisk.set(v.attached_to.disk, v);
  }

  function changed() {
    volumes.reload();
    nics.reload();
    onChange();
  }

  async function run(label: string, f: () => Promise<unknown>) {
    setBusy(label);
    setError(null);
    try {
      await f();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
      changed();
    }
  }

  return (
    <div>
      <div class="head">
        <h2 id="disks-title">Disks</h2>
        <button type="button" disabled={busy !== null} onClick={() => setAttaching(true)}>
          Attach volume
        </button>
      </div>
      <ErrorText error={error} />
      <div class="table-wrap">
        <table aria-labelledby="disks-title">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Volume</th>
              <th scope="col">Format</th>
              <th scope="col">Size</th>
              <th scope="col">Boot</th>
              <th scope="col">Read-only</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {vm.disks.map((d) => {
              const v = byDisk.get(d.name);
              return (
                <tr key={d.name} data-disk={d.name}>
                  <td>{d.name}</td>
                  <td>{v ? `${v.pool}/${v.name} (${v.kind})` : "—"}</td>
                  <td>{d.format}</td>
                  <td>{formatBytes(d.virtual_size_bytes)}</td>
                  <td>{d.boot_index ?? "—"}</td>
                  <td>{d.read_only ? "yes" : "no"}</td>
                  <td>
                    {v?.kind === "custom" && (
                      <button type="button" class="danger" disabled={busy !== null} aria-label={`Detach disk ${d.name}`} onClick={() => setPending({ kind: "disk", name: d.name })}>
                        Detach
                      </button>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {vm.disks.length === 0 && <p class="muted">No disks.</p>}

      <div class="head">
        <h2 id="nics-title">NICs</h2>
        <button type="button" disabled={busy !== null} onClick={() => setAdding(true)}>
          Add NIC
        </button>
      </div>
      <ErrorText error={nics.error} />
      <div class="table-wrap">
        <table aria-labelledby="nics-title">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Network</th>
              <th scope="col">MAC</th>
              <th scope="col">Address</th>
              <th scope="col">Link</th>
              <th scope="col">Firewall</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {(nics.data ?? []).map((n) => {
              // The guest agent's addresses only mean something while the guest runs.
              const live = vm.state === "running" || vm.state === "paused";
              const guest = live ? (vm.nics.find((g) => g.name === n.name)?.addresses ?? []) : [];
              const rules = n.firewall.rules?.length ?? 0;
              return (
                <tr key={n.name} data-nic={n.name}>
                  <td>{n.name}</td>
                  <td>{n.network === "user" || n.network === "" ? n.network || "—" : <a href={href(`/networks/${encodeURIComponent(n.network)}`)}>{n.network}</a>}</td>
                  <td class="mono">{n.mac}</td>
                  <td class="mono">{[n.ip, ...guest.filter((a) => a !== n.ip)].filter(Boolean).join(", ") || "—"}</td>
                  <td>
                    {n.link_up ? "up" : "down"}
                    {n.vlan ? ` · VLAN ${n.vlan}` : ""}
                  </td>
                  <td>{rules ? `${rules} rule${rules > 1 ? "s" : ""}, in ${n.firewall.default_in ?? "accept"}` : "—"}</td>
                  <td>
                    <button type="button" class="danger" disabled={busy !== null} aria-label={`Remove NIC ${n.name}`} onClick={() => setPending({ kind: "nic", name: n.name })}>
                      Remove
                    </button>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {nics.data?.length === 0 && <p class="muted">No NICs.</p>}

      {attaching && <AttachVolume vm={vm} volumes={volumes.data ?? []} onClose={() => (setAttaching(false), changed())} />}
      {adding && <AddNic vm={vm} onClose={() => (setAdding(false), changed())} />}
      <Confirm
        open={pending !== null}
        title={pending ? (pending.kind === "disk" ? `Detach disk ${pending.name}?` : `Remove NIC ${pending.name}?`) : ""}
        confirmLabel={pending?.kind === "disk" ? "Detach" : "Remove"}
        onCancel={() => setPending(null)}
        onConfirm={() => {
          const p = pending;
          setPending(null);
          if (!p) return;
          if (p.kind === "disk") {
            void run("detach", async () => waitOperation(await call(api.DELETE("/v1/vms/{name}/disks/{disk}", { params: { path: { name, disk: p.name } } }))));
          } else {
            void run("remove", () => call(api.DELETE("/v1/vms/{name}/nics/{nic}", { params: { path: { name, nic: p.name } } })));
          }
        }}
      >
        <p>
          {pending?.kind === "disk"
            ? "The volume stays in its pool and can be attached again. A running guest should unmount it first."
            : "The NIC is unplugged (at once when the VM runs) and its address reservation released."}
        </p>
      </Confirm>
    </div>
  );
}

function AttachVolume({ vm, volumes, onClose }: { vm: VmInfo; volumes: Volume[]; onClose: () => void }) {
  // Only custom volumes that are free can be attached.
  const free = volumes.filter((v) => v.kind === "custom" && !v.attached_to);
  const [choice, setChoice] = useState(free[0] ? `${free[0].pool}/${free[0].name}` : "");
  const [disk, setDisk] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [op, setOp] = useState<Operation | null>(null);

  async function submit() {
    setError(null);
    const [pool, volume] = choice.split("/", 2);
    setBusy(true);
    try {
      const started = await call(
        api.POST("/v1/vms/{name}/disks", { params: { path: { name: vm.name } }, body: { pool: pool ?? "", volume: volume ?? "", disk: disk.trim() || null } }),
      );
      setOp(started);
      await waitOperation(started, 600, setOp);
      onClose();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <FormDialog open title={`Attach a volume to ${vm.name}`} submitLabel={busy ? "Attaching…" : "Attach"} busy={busy || !choice} onSubmit={() => void submit()} onCancel={onClose}>
      <label for="attach-volume">Volume</label>
      <select id="attach-volume" value={choice} onChange={(e) => setChoice((e.target as HTMLSelectElement).value)} {...invalidProps(error, "volume", "attach-volume")}>
        {free.map((v) => (
          <option key={v.uuid} value={`${v.pool}/${v.name}`}>
            {v.pool}/{v.name} ({formatBytes(v.virtual_size_bytes)})
          </option>
        ))}
      </select>
      {free.length === 0 && (
        <p class="muted">
          No free custom volumes: create one on the <a href={href("/storage")}>Storage</a> page.
        </p>
      )}
      <FieldError error={error} field="volume" id="attach-volume" />
      <FieldError error={error} field="pool" id="attach-pool" />
      <label for="attach-disk">Disk name in the VM (optional; default: the volume's name)</label>
      <input id="attach-disk" value={disk} onInput={(e) => setDisk((e.target as HTMLInputElement).value)} {...invalidProps(error, "disk", "attach-disk")} />
      <FieldError error={error} field="disk" id="attach-disk" />
      {op && busy && <p class="muted">{op.progress.stage ?? "working…"}</p>}
      {error && !isFieldError(error, ["volume", "pool", "disk"]) ? <ErrorText error={error} /> : null}
    </FormDialog>
  );
}

function AddNic({ vm, onClose }: { vm: VmInfo; onClose: () => void }) {
  const nets = useData(() => call(api.GET("/v1/networks")), []);
  const [network, setNetwork] = useState("");
  const [ip, setIp] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const chosen = network || nets.data?.[0]?.name || "";

  async function submit() {
    setError(null);
    setBusy(true);
    try {
      await call(api.POST("/v1/vms/{name}/nics", { params: { path: { name: vm.name } }, body: { network: chosen, ip: ip.trim() || null } }));
      onClose();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <FormDialog open title={`Add a NIC to ${vm.name}`} submitLabel={busy ? "Adding…" : "Add NIC"} busy={busy || !chosen} onSubmit={() => void submit()} onCancel={onClose}>
      <label for="nic-network">Network</label>
      <select id="nic-network" value={chosen} onChange={(e) => setNetwork((e.target as HTMLSelectElement).value)} {...invalidProps(error, "network", "nic-network")}>
        {(nets.data ?? []).map((n) => (
          <option key={n.name} value={n.name}>
            {n.name} ({n.type}
            {n.subnet ? ` ${n.subnet}` : ""})
          </option>
        ))}
      </select>
      <ErrorText error={nets.error} />
      {nets.data?.length === 0 && (
        <p class="muted">
          No managed networks: create one on the <a href={href("/networks")}>Networks</a> page.
        </p>
      )}
      <FieldError error={error} field="network" id="nic-network" />
      <label for="nic-ip">Fixed address (optional; default: from the network's DHCP range)</label>
      <input id="nic-ip" class="mono" value={ip} onInput={(e) => setIp((e.target as HTMLInputElement).value)} {...invalidProps(error, "ip", "nic-ip")} />
      <FieldError error={error} field="ip" id="nic-ip" />
      {error && !isFieldError(error, ["network", "ip"]) ? <ErrorText error={error} /> : null}
    </FormDialog>
  );
}
