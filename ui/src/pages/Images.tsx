import { useState } from "preact/hooks";
import { api, call, formatBytes, waitOperation, type Schemas } from "../api/client";
import { useEventRefresh } from "../events";
import { Confirm, ErrorText, FieldError, invalidProps, isFieldError, localFieldError, useData } from "../ui";

type BuildBody = Schemas["BuildImageRequest"];
/** Build options whose errors show next to their field. */
const BUILD_FIELDS = ["release", "size_mib", "packages"];

export function Images() {
  const images = useData(() => call(api.GET("/v1/images")), []);
  useEventRefresh("image", images.reload);
  const [builder, setBuilder] = useState("tiny");
  const [name, setName] = useState("");
  // Debian builder options (the API refuses them for the other builders).
  const [release, setRelease] = useState("bookworm");
  const [sizeGib, setSizeGib] = useState("4");
  const [packages, setPackages] = useState("");
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
            const body: BuildBody = { builder, name: name.trim() || null };
            if (builder === "debian") {
              const gib = Number(sizeGib);
              if (sizeGib.trim() === "" || !Number.isFinite(gib)) throw localFieldError("size_mib", "the disk size must be a number of GiB");
              body.release = release;
              body.size_mib = Math.round(gib * 1024);
              body.packages = packages
                .split(/[\s,]+/)
                .map((p) => p.trim())
                .filter((p) => p !== "");
            }
            await waitOperation(await call(api.POST("/v1/images/build", { body })), 1800);
          });
        }}
      >
        <label>
          Builder
          <select value={builder} onChange={(e) => setBuilder((e.target as HTMLSelectElement).value)}>
            <option value="tiny">tiny (kernel + initramfs)</option>
            <option value="tiny-disk">tiny-disk (GPT disk, GRUB)</option>
            <option value="debian">debian (Debian cloud image, debootstrap; minutes)</option>
          </select>
        </label>
        {builder === "debian" && (
          <>
            <label>
              Release
              <select value={release} onChange={(e) => setRelease((e.target as HTMLSelectElement).value)} {...invalidProps(error, "release", "build-release")}>
                <option value="bookworm">bookworm (Debian 12)</option>
              </select>
            </label>
            <label>
              Disk size (GiB)
              <input
                inputMode="decimal"
                size={5}
                value={sizeGib}
                onInput={(e) => setSizeGib((e.target as HTMLInputElement).value)}
                {...invalidProps(error, "size_mib", "build-size")}
              />
            </label>
            <label>
              Extra packages
              <input
                placeholder="e.g. curl, vim"
                value={packages}
                onInput={(e) => setPackages((e.target as HTMLInputElement).value)}
                {...invalidProps(error, "packages", "build-packages")}
              />
            </label>
          </>
        )}
        <label>
          Name (optional) <input value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" class="primary" disabled={busy !== null}>
          {busy === "build" ? "Building…" : "Build image"}
        </button>
      </form>
      <FieldError error={error} field="release" id="build-release" />
      <FieldError error={error} field="size_mib" id="build-size" />
      <FieldError error={error} field="packages" id="build-packages" />
      <ErrorText error={isFieldError(error, BUILD_FIELDS) ? images.error : (error ?? images.error)} />
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
