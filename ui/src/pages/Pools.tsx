// Storage pools and their volumes: pools with create/delete; the selected pool's volumes
// (size, allocation, format, where attached, which overlays are based on them) with create,
// grow and delete. The API validates sizes and names and refuses to delete volumes in use;
// its messages are shown next to the field they are about, or above the table.
import { useState } from "preact/hooks";
import { api, call, formatBytes, waitOperation, type Schemas } from "../api/client";
import { useEventRefresh } from "../events";
import { href } from "../router";
import { Confirm, ErrorText, FieldError, FormDialog, invalidProps, isFieldError, localFieldError, SIZE_UNITS, toBytes, useData, type SizeUnit } from "../ui";

type Volume = Schemas["VolumeInfo"];

export function Pools() {
  const pools = useData(() => call(api.GET("/v1/storage-pools")), [], 15000);
  const [name, setName] = useState("");
  const [path, setPath] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [del, setDel] = useState<string | null>(null);
  const [chosen, setChosen] = useState<string | null>(null);
  // The first pool's volumes show until another pool is chosen.
  const open = chosen ?? pools.data?.[0]?.name ?? null;

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
          Pool name <input required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Directory (optional) <input value={path} placeholder="<state dir>/pools/NAME" onInput={(e) => setPath((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" class="primary">
          Create pool
        </button>
      </form>
      <ErrorText error={error ?? pools.error} />
      <div class="table-wrap">
        <table aria-labelledby="pools-page-title">
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
              <tr key={p.uuid} data-pool={p.name} class={open === p.name ? "selected" : ""}>
                <td>{p.name}</td>
                <td>{p.driver}</td>
                <td class="mono small break">{p.path}</td>
                <td>{p.volumes}</td>
                <td>{formatBytes(p.allocated_bytes)}</td>
                <td>{formatBytes(p.provisioned_bytes)}</td>
                <td class="nowrap">
                  {formatBytes(p.available_bytes)} of {formatBytes(p.capacity_bytes)}
                </td>
                <td class="nowrap">
                  <button type="button" aria-pressed={open === p.name} aria-label={`Show volumes of ${p.name}`} onClick={() => setChosen(p.name)}>
                    Volumes
                  </button>{" "}
                  <button type="button" class="danger" aria-label={`Delete pool ${p.name}`} onClick={() => setDel(p.name)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {open && <PoolVolumes key={open} pool={open} onChange={pools.reload} />}
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
      <p class="muted small">
        Networks are on the <a href={href("/networks")}>Networks</a> page.
      </p>
    </section>
  );
}

function refText(r: Schemas["VolumeRef"], pool: string): string {
  return r.pool === pool ? r.volume : `${r.pool}/${r.volume}`;
}

function attachedText(v: Volume): string {
  const a = v.attached_to;
  if (!a) return "—";
  return `${a.project === "default" ? "" : `${a.project}/`}${a.vm} (${a.disk})`;
}

function PoolVolumes({ pool, onChange }: { pool: string; onChange: () => void }) {
  const volumes = useData(() => call(api.GET("/v1/storage-pools/{pool}/volumes", { params: { path: { pool } } })), [pool], 15000);
  useEventRefresh(`volume/${pool}/`, volumes.reload);
  const [name, setName] = useState("");
  const [size, setSize] = useState("1");
  const [unit, setUnit] = useState<SizeUnit>("GiB");
  const [createError, setCreateError] = useState<unknown>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [del, setDel] = useState<string | null>(null);
  const [resize, setResize] = useState<Volume | null>(null);

  function changed() {
    volumes.reload();
    onChange();
  }

  async function create(e: Event) {
    e.preventDefault();
    setCreateError(null);
    const bytes = toBytes(size, unit);
    if (Number.isNaN(bytes)) return setCreateError(localFieldError("size_bytes", "size must be a number"));
    setBusy("create");
    try {
      await call(api.POST("/v1/storage-pools/{pool}/volumes", { params: { path: { pool } }, body: { name: name.trim(), size_bytes: bytes } }));
      setName("");
    } catch (err) {
      setCreateError(err);
    } finally {
      setBusy(null);
      changed();
    }
  }

  async function remove(volume: string) {
    setError(null);
    setBusy("delete");
    try {
      await call(api.DELETE("/v1/storage-pools/{pool}/volumes/{volume}", { params: { path: { pool, volume } } }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
      changed();
    }
  }

  return (
    <section aria-labelledby="volumes-title">
      <h2 id="volumes-title">Volumes in {pool}</h2>
      <form class="inline-form" aria-label={`Create a volume in ${pool}`} onSubmit={create} noValidate>
        <div>
          <label for="vol-name">Volume name</label>
          <input id="vol-name" required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} {...invalidProps(createError, "name", "vol-name")} />
          <FieldError error={createError} field="name" id="vol-name" />
        </div>
        <div>
          <label for="vol-size">Size</label>
          <span class="size-input">
            <input id="vol-size" inputMode="decimal" value={size} onInput={(e) => setSize((e.target as HTMLInputElement).value)} {...invalidProps(createError, "size_bytes", "vol-size")} />
            <select aria-label="Size unit" value={unit} onChange={(e) => setUnit((e.target as HTMLSelectElement).value as SizeUnit)}>
              {Object.keys(SIZE_UNITS).map((u) => (
                <option key={u}>{u}</option>
              ))}
            </select>
          </span>
          <FieldError error={createError} field="size_bytes" id="vol-size" />
        </div>
        <button type="submit" class="primary" disabled={busy !== null}>
          {busy === "create" ? "Creating…" : "Create volume"}
        </button>
      </form>
      {createError && !isFieldError(createError, ["name", "size_bytes"]) ? <ErrorText error={createError} /> : null}
      <ErrorText error={error ?? volumes.error} />
      <div class="table-wrap">
        <table aria-labelledby="volumes-title">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Kind</th>
              <th scope="col">Format</th>
              <th scope="col">Size</th>
              <th scope="col">Allocated</th>
              <th scope="col">Attached to</th>
              <th scope="col">Overlay of</th>
              <th scope="col">Base of</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {(volumes.data ?? []).map((v) => (
              <tr key={v.uuid} data-volume={v.name}>
                <td>
                  {v.name}
                  {v.read_only && <span class="badge">read-only</span>}
                </td>
                <td>{v.kind}</td>
                <td>{v.format}</td>
                <td>{formatBytes(v.virtual_size_bytes)}</td>
                <td>{formatBytes(v.allocated_bytes)}</td>
                <td>{attachedText(v)}</td>
                <td>{v.backing ? refText(v.backing, pool) : v.backing_image ? `image ${v.backing_image}` : "—"}</td>
                <td>{v.dependants.map((d) => refText(d, pool)).join(", ") || "—"}</td>
                <td class="nowrap">
                  <button type="button" disabled={busy !== null} aria-label={`Resize volume ${v.name}`} onClick={() => setResize(v)}>
                    Resize
                  </button>{" "}
                  <button type="button" class="danger" disabled={busy !== null} aria-label={`Delete volume ${v.name}`} onClick={() => setDel(v.name)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {volumes.data?.length === 0 && <p class="muted">No volumes in this pool.</p>}
      {resize && <ResizeVolume key={resize.uuid} pool={pool} volume={resize} onDone={() => (setResize(null), changed())} />}
      <Confirm
        open={del !== null}
        title={`Delete volume ${del}?`}
        confirmLabel="Delete"
        onCancel={() => setDel(null)}
        onConfirm={() => {
          const n = del;
          setDel(null);
          if (n) void remove(n);
        }}
      >
        <p>Its data is gone for good. The API refuses while a VM uses it or overlays are based on it.</p>
      </Confirm>
    </section>
  );
}

/** Grows a volume (the API refuses to shrink); runs as an operation. */
function ResizeVolume({ pool, volume, onDone }: { pool: string; volume: Volume; onDone: () => void }) {
  const gib = volume.virtual_size_bytes / SIZE_UNITS.GiB;
  const [unit, setUnit] = useState<SizeUnit>(Number.isInteger(gib) ? "GiB" : "MiB");
  const [size, setSize] = useState(String(volume.virtual_size_bytes / SIZE_UNITS[Number.isInteger(gib) ? "GiB" : "MiB"]));
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  async function submit() {
    setError(null);
    const bytes = toBytes(size, unit);
    if (Number.isNaN(bytes)) return setError(localFieldError("size_bytes", "size must be a number"));
    setBusy(true);
    try {
      const op = await call(
        api.POST("/v1/storage-pools/{pool}/volumes/{volume}/resize", { params: { path: { pool, volume: volume.name } }, body: { size_bytes: bytes } }),
      );
      await waitOperation(op);
      onDone();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <FormDialog open title={`Resize volume ${volume.name}`} submitLabel={busy ? "Resizing…" : "Resize"} busy={busy} onSubmit={() => void submit()} onCancel={onDone}>
      <p class="muted">Now {formatBytes(volume.virtual_size_bytes)}. Volumes only grow; the guest sees the new size after it rescans the disk.</p>
      <label for="resize-size">New size</label>
      <span class="size-input">
        <input id="resize-size" inputMode="decimal" value={size} onInput={(e) => setSize((e.target as HTMLInputElement).value)} {...invalidProps(error, "size_bytes", "resize-size")} />
        <select aria-label="Size unit" value={unit} onChange={(e) => setUnit((e.target as HTMLSelectElement).value as SizeUnit)}>
          {Object.keys(SIZE_UNITS).map((u) => (
            <option key={u}>{u}</option>
          ))}
        </select>
      </span>
      <FieldError error={error} field="size_bytes" id="resize-size" />
      {error && !isFieldError(error, ["size_bytes"]) ? <ErrorText error={error} /> : null}
    </FormDialog>
  );
}
