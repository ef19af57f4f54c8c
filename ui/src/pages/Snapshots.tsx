import { useState } from "preact/hooks";
import { api, call, waitOperation, type Operation, type VmInfo } from "../api/client";
import { Confirm, ErrorText, FieldError, invalidProps, isFieldError, StateBadge, useData } from "../ui";

export function Snapshots({ vm, onChange }: { vm: VmInfo; onChange: () => void }) {
  const name = vm.name;
  const snaps = useData(() => call(api.GET("/v1/vms/{name}/snapshots", { params: { path: { name } } })), [name]);
  const [snapName, setSnapName] = useState("");
  const [description, setDescription] = useState("");
  const [memory, setMemory] = useState(false);
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [pending, setPending] = useState<null | { kind: "restore" | "delete"; snap: string }>(null);

  async function run(label: string, start: () => Promise<Operation>) {
    setBusy(label);
    setError(null);
    try {
      await waitOperation(await start());
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(null);
      snaps.reload();
      onChange();
    }
  }

  async function create(e: Event) {
    e.preventDefault();
    const ok = await run("create", () =>
      call(api.POST("/v1/vms/{name}/snapshots", { params: { path: { name } }, body: { name: snapName.trim(), description: description || null, memory } })),
    );
    if (ok) {
      setSnapName("");
      setDescription("");
    }
  }

  return (
    <div>
      <form class="inline-form" onSubmit={create} aria-label="Take a snapshot">
        <label>
          Snapshot name
          <input
            name="snapshot-name"
            required
            value={snapName}
            onInput={(e) => setSnapName((e.target as HTMLInputElement).value)}
            {...invalidProps(error, "name", "snapshot-name")}
          />
          <FieldError error={error} field="name" id="snapshot-name" />
        </label>
        <label>
          Description <input value={description} onInput={(e) => setDescription((e.target as HTMLInputElement).value)} />
        </label>
        <label class="check">
          <input type="checkbox" checked={memory} onChange={(e) => setMemory((e.target as HTMLInputElement).checked)} disabled={vm.state !== "running" && vm.state !== "paused"} />
          Include memory
        </label>
        <button type="submit" class="primary" disabled={busy !== null}>
          {busy === "create" ? "Taking snapshot…" : "Take snapshot"}
        </button>
      </form>
      <ErrorText error={(error && !isFieldError(error, ["name"]) ? error : null) ?? snaps.error} />
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Taken</th>
            <th scope="col">VM was</th>
            <th scope="col">Memory</th>
            <th scope="col">Description</th>
            <th scope="col">Actions</th>
          </tr>
        </thead>
        <tbody>
          {(snaps.data ?? []).map((s) => (
            <tr key={s.name} data-snapshot={s.name}>
              <td>
                {s.name} {s.current && <span class="badge ok">current</span>}
              </td>
              <td>{new Date(s.created_at).toLocaleString()}</td>
              <td>
                <StateBadge state={s.vm_state} />
              </td>
              <td>{s.memory ? "yes" : "no"}</td>
              <td>{s.description}</td>
              <td>
                <button type="button" disabled={busy !== null} onClick={() => setPending({ kind: "restore", snap: s.name })}>
                  Restore
                </button>{" "}
                <button type="button" class="danger" disabled={busy !== null} onClick={() => setPending({ kind: "delete", snap: s.name })}>
                  Delete
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {snaps.data?.length === 0 && <p class="muted">No snapshots.</p>}
      <Confirm
        open={pending !== null}
        title={pending ? `${pending.kind === "restore" ? "Restore" : "Delete"} snapshot ${pending.snap}?` : ""}
        confirmLabel={pending?.kind === "restore" ? "Restore" : "Delete"}
        onCancel={() => setPending(null)}
        onConfirm={() => {
          const p = pending;
          setPending(null);
          if (!p) return;
          const params = { params: { path: { name, snapshot: p.snap } } };
          void run(p.kind, () =>
            p.kind === "restore"
              ? call(api.POST("/v1/vms/{name}/snapshots/{snapshot}/restore", params))
              : call(api.DELETE("/v1/vms/{name}/snapshots/{snapshot}", params)),
          );
        }}
      >
        <p>{pending?.kind === "restore" ? "The VM's disks (and memory, if captured) go back to this snapshot." : "The snapshot's data is removed."}</p>
      </Confirm>
    </div>
  );
}
