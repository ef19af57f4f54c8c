import { useState } from "preact/hooks";
import { api, call, formatBytes, waitOperation } from "../api/client";
import { useEventRefresh } from "../events";
import { Confirm, ErrorText, useData } from "../ui";

export function Images() {
  const images = useData(() => call(api.GET("/v1/images")), []);
  useEventRefresh("image", images.reload);
  const [builder, setBuilder] = useState("tiny");
  const [name, setName] = useState("");
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [del, setDel] = useState<string | null>(null);

  async function run(label: string, f: () => Promise<void>) {
    setBusy(label);
    setError(null);
    try {
      await f();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
      images.reload();
    }
  }

  return (
    <section aria-labelledby="images-title">
      <h1 id="images-title">Images</h1>
      <form
        class="inline-form"
        aria-label="Build an image"
        onSubmit={(e) => {
          e.preventDefault();
          void run("build", async () => {
            await waitOperation(await call(api.POST("/v1/images/build", { body: { builder, name: name.trim() || null } })), 1800);
          });
        }}
      >
        <label>
          Builder
          <select value={builder} onChange={(e) => setBuilder((e.target as HTMLSelectElement).value)}>
            <option value="tiny">tiny (kernel + initramfs)</option>
            <option value="tiny-disk">tiny-disk (GPT disk, GRUB)</option>
          </select>
        </label>
        <label>
          Name (optional) <input value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" class="primary" disabled={busy !== null}>
          {busy === "build" ? "Building…" : "Build image"}
        </button>
      </form>
      <ErrorText error={error ?? images.error} />
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Kind</th>
            <th scope="col">Size</th>
            <th scope="col">Source</th>
            <th scope="col">Created</th>
            <th scope="col">
              <span class="sr-only">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {(images.data ?? []).map((i) => (
            <tr key={i.uuid}>
              <td>{i.name}</td>
              <td>{i.content.kind === "kernel" ? `kernel ${i.content.kernel_version}` : `disk (${i.content.firmware})`}</td>
              <td>{formatBytes(i.size_bytes)}</td>
              <td>{i.source}</td>
              <td>{new Date(i.created_at).toLocaleString()}</td>
              <td>
                <button type="button" class="danger" disabled={busy !== null} onClick={() => setDel(i.name)}>
                  Delete
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {images.data?.length === 0 && <p class="muted">No images.</p>}
      <Confirm
        open={del !== null}
        title={`Delete image ${del}?`}
        confirmLabel="Delete"
        onCancel={() => setDel(null)}
        onConfirm={() => {
          const n = del;
          setDel(null);
          if (n) void run("delete", async () => void (await waitOperation(await call(api.DELETE("/v1/images/{name}", { params: { path: { name: n } } })))));
        }}
      >
        <p>VMs created from it keep working only if they do not depend on it; the API refuses otherwise.</p>
      </Confirm>
    </section>
  );
}
