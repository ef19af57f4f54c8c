// Clone a VM (POST /v1/vms/{name}/clone): linked (copy-on-write overlays of a base made from
// the VM's state, a template's volumes, or a snapshot) or full (independent copies), from the
// current state or from a snapshot. The source must be stopped or a template; the API says so
// otherwise, and its field errors are shown next to the fields.
import { useState } from "preact/hooks";
import { api, call, waitOperation, type Operation, type Schemas, type VmInfo } from "../api/client";
import { navigate } from "../router";
import { ErrorText, FieldError, FormDialog, invalidProps, isFieldError, OpProgress, useData } from "../ui";

const FIELDS = ["name", "mode", "snapshot", "pool"];

export function CloneVm({ vm, onClose }: { vm: VmInfo; onClose: () => void }) {
  const snaps = useData(() => call(api.GET("/v1/vms/{name}/snapshots", { params: { path: { name: vm.name } } })), [vm.name]);
  const pools = useData(() => call(api.GET("/v1/storage-pools")), []);
  const [name, setName] = useState(`${vm.name}-clone`);
  const [mode, setMode] = useState<Schemas["CloneMode"]>("linked");
  const [snapshot, setSnapshot] = useState("");
  const [pool, setPool] = useState("");
  const [start, setStart] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [op, setOp] = useState<Operation | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit() {
    setError(null);
    setBusy(true);
    try {
      const body: Schemas["CloneVmRequest"] = { name: name.trim(), mode, snapshot: snapshot || null, pool: pool || null, start };
      const started = await call(api.POST("/v1/vms/{name}/clone", { params: { path: { name: vm.name } }, body }));
      setOp(started);
      await waitOperation(started, 1800, setOp);
      onClose();
      navigate(`/vms/${encodeURIComponent(body.name)}`);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <FormDialog open title={`Clone ${vm.name}`} submitLabel={busy ? "Cloning…" : "Clone"} busy={busy} onSubmit={() => void submit()} onCancel={onClose}>
      <label for="clone-name">Name of the new VM</label>
      <input id="clone-name" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} {...invalidProps(error, "name", "clone-name")} />
      <FieldError error={error} field="name" id="clone-name" />
      <fieldset class="plain">
        <legend>Mode</legend>
        <label class="check">
          <input type="radio" name="clone-mode" checked={mode === "linked"} onChange={() => setMode("linked")} /> Linked (copy-on-write; fast, shares a base)
        </label>
        <label class="check">
          <input type="radio" name="clone-mode" checked={mode === "full"} onChange={() => setMode("full")} /> Full (independent copy of every disk)
        </label>
      </fieldset>
      <FieldError error={error} field="mode" id="clone-mode" />
      <label for="clone-snapshot">From</label>
      <select id="clone-snapshot" value={snapshot} onChange={(e) => setSnapshot((e.target as HTMLSelectElement).value)} {...invalidProps(error, "snapshot", "clone-snapshot")}>
        <option value="">the current state</option>
        {(snaps.data ?? []).map((s) => (
          <option key={s.name} value={s.name}>
            snapshot {s.name}
          </option>
        ))}
      </select>
      <FieldError error={error} field="snapshot" id="clone-snapshot" />
      <label for="clone-pool">Storage pool for the new disks</label>
      <select id="clone-pool" value={pool} onChange={(e) => setPool((e.target as HTMLSelectElement).value)} {...invalidProps(error, "pool", "clone-pool")}>
        <option value="">same as the source</option>
        {(pools.data ?? []).map((p) => (
          <option key={p.name} value={p.name}>
            {p.name}
          </option>
        ))}
      </select>
      <FieldError error={error} field="pool" id="clone-pool" />
      <label class="check">
        <input type="checkbox" checked={start} onChange={(e) => setStart((e.target as HTMLInputElement).checked)} /> Start the clone
      </label>
      {op && busy && <OpProgress op={op} />}
      {error && !isFieldError(error, FIELDS) ? <ErrorText error={error} /> : null}
    </FormDialog>
  );
}
