import { useState } from "preact/hooks";
import { api, call, formatBytes } from "../api/client";
import { Confirm, ErrorText, useData } from "../ui";

export function Pools() {
  const pools = useData(() => call(api.GET("/v1/storage-pools")), [], 15000);
  const [name, setName] = useState("");
  const [path, setPath] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [del, setDel] = useState<string | null>(null);
  const [open, setOpen] = useState<string | null>(null);
  const volumes = useData(
    () => (open ? call(api.GET("/v1/storage-pools/{pool}/volumes", { params: { path: { pool: open } } })) : Promise.resolve([])),
    [open],
  );

  async function attempt(f: () => Promise<unknown>) {
    setError(null);
    try {
      await f();
    } catch (e) {
      setError(e);
    }
    pools.reload();
  }

  return (
    <section aria-labelledby="pools-page-title">
      <h1 id="pools-page-title">Storage pools</h1>
      <form
        class="inline-form"
        aria-label="Create a storage pool"
        onSubmit={(e) => {
          e.preventDefault();
          void attempt(async () => {
            await call(api.POST("/v1/storage-pools", { body: { name: name.trim(), driver: "dir", path: path.trim() || null } }));
            setName("");
            setPath("");
          });
        }}
      >
        <label>
          Name <input required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Directory (optional) <input value={path} placeholder="<state dir>/pools/NAME" onInput={(e) => setPath((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" class="primary">
          Create pool
        </button>
      </form>
      <ErrorText error={error ?? pools.error} />
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Driver</th>
            <th scope="col">Path</th>
            <th scope="col">Volumes</th>
            <th scope="col">Allocated</th>
            <th scope="col">Provisioned</th>
            <th scope="col">Free</th>
            <th scope="col">
              <span class="sr-only">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {(pools.data ?? []).map((p) => (
            <tr key={p.uuid}>
              <td>{p.name}</td>
              <td>{p.driver}</td>
              <td class="mono small">{p.path}</td>
              <td>{p.volumes}</td>
              <td>{formatBytes(p.allocated_bytes)}</td>
              <td>{formatBytes(p.provisioned_bytes)}</td>
              <td>
                {formatBytes(p.available_bytes)} of {formatBytes(p.capacity_bytes)}
              </td>
              <td>
                <button type="button" aria-expanded={open === p.name} onClick={() => setOpen(open === p.name ? null : p.name)}>
                  Volumes
                </button>{" "}
                <button type="button" class="danger" onClick={() => setDel(p.name)}>
                  Delete
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {open && (
        <>
          <h2>Volumes in {open}</h2>
          <ErrorText error={volumes.error} />
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Kind</th>
                <th scope="col">Format</th>
                <th scope="col">Size</th>
                <th scope="col">Allocated</th>
                <th scope="col">Attached to</th>
              </tr>
            </thead>
            <tbody>
              {(volumes.data ?? []).map((v) => (
                <tr key={v.uuid}>
                  <td>{v.name}</td>
                  <td>{String(v.kind)}</td>
                  <td>{String(v.format)}</td>
                  <td>{formatBytes(v.virtual_size_bytes)}</td>
                  <td>{formatBytes(v.allocated_bytes)}</td>
                  <td>{JSON.stringify(v.attached_to ?? null) === "null" ? "—" : describe(v.attached_to)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      <Confirm
        open={del !== null}
        title={`Delete pool ${del}?`}
        confirmLabel="Delete"
        onCancel={() => setDel(null)}
        onConfirm={() => {
          const n = del;
          setDel(null);
          if (n) void attempt(() => call(api.DELETE("/v1/storage-pools/{pool}", { params: { path: { pool: n } } })));
        }}
      >
        <p>Only an empty pool can be deleted.</p>
      </Confirm>
      <p class="muted small">Networks: the API has no /v1/networks endpoint yet; VMs use the built-in user-mode network ("user").</p>
    </section>
  );
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return v.map(describe).join(", ");
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return [o.vm, o.disk].filter(Boolean).join("/") || JSON.stringify(v);
  }
  return String(v);
}
