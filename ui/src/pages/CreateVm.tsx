import { useState } from "preact/hooks";
import { api, call, waitOperation, type Schemas } from "../api/client";
import { navigate } from "../router";
import { ErrorText, FieldError, invalidProps, isFieldError, localFieldError, OpProgress, useData } from "../ui";

/** Request fields shown next to their inputs (other errors go above the Create button). */
const FIELDS = [
  "name",
  "image",
  "template",
  "vcpus",
  "memory_mib",
  "disk_mib",
  "networks",
  "kernel_args",
  "cloud_init",
  "cloud_init.hostname",
  "cloud_init.ssh_authorized_keys",
  "cloud_init.user_data",
];

type Form = {
  name: string;
  source: "image" | "template";
  image: string;
  template: string;
  vcpus: string;
  memory_mib: string;
  disk_mib: string;
  /** null: not touched yet, so the default network (or "user") is picked. */
  networks: string[] | null;
  kernel_args: string;
  hostname: string;
  ssh_keys: string;
  user_data: string;
  start: boolean;
};

/** Number field: empty means "the API's default"; anything else is sent as typed (the API validates). */
function num(s: string): number | null {
  if (s.trim() === "") return null;
  const n = Number(s);
  return Number.isFinite(n) ? n : NaN;
}

export function CreateVm() {
  const images = useData(() => call(api.GET("/v1/images")), []);
  const vms = useData(() => call(api.GET("/v1/vms")), []);
  // Managed networks; a daemon without them answers 503 and only "user" is offered.
  const nets = useData(() => call(api.GET("/v1/networks")).catch(() => []), []);
  const templates = (vms.data ?? []).filter((v) => v.template);
  // `?template=NAME` (the template page's "New VM from template") preselects it.
  const fromTemplate = new URLSearchParams(location.search).get("template") ?? "";
  const [f, setF] = useState<Form>({
    name: "",
    source: fromTemplate ? "template" : "image",
    image: "",
    template: fromTemplate,
    vcpus: fromTemplate ? "" : "1",
    memory_mib: fromTemplate ? "" : "256",
    disk_mib: "",
    networks: null,
    kernel_args: "",
    hostname: "",
    ssh_keys: "",
    user_data: "",
    start: true,
  });
  const [error, setError] = useState<unknown>(null);
  const [op, setOp] = useState<Schemas["Operation"] | null>(null);
  const [busy, setBusy] = useState(false);

  const set = <K extends keyof Form>(k: K, v: Form[K]) => setF((old) => ({ ...old, [k]: v }));
  const image = f.image || images.data?.[0]?.name || "";
  const template = f.template || templates[0]?.name || "";
  const fromImage = f.source === "image";
  const chosenTemplate = templates.find((t) => t.name === template);
  /** Switching the source resets the resources to that source's defaults. */
  const setSource = (source: Form["source"]) =>
    setF((old) => ({ ...old, source, vcpus: source === "image" ? "1" : "", memory_mib: source === "image" ? "256" : "" }));
  const netChoices = ["user", ...(nets.data ?? []).map((n) => n.name)];
  const defaultNet = (nets.data ?? []).find((n) => n.default)?.name ?? "user";
  const networks = f.networks ?? [defaultNet];
  const toggleNet = (n: string, on: boolean) => set("networks", on ? [...networks.filter((x) => x !== n), n] : networks.filter((x) => x !== n));

  async function submit(e: Event) {
    e.preventDefault();
    setError(null);
    const keys = f.ssh_keys
      .split("\n")
      .map((k) => k.trim())
      .filter(Boolean);
    const cloudInit =
      f.hostname.trim() || keys.length || f.user_data.trim()
        ? { hostname: f.hostname.trim() || null, ssh_authorized_keys: keys, user_data: f.user_data.trim() ? f.user_data : null }
        : null;
    const body: Schemas["CreateVmRequest"] = {
      name: f.name.trim(),
      vcpus: num(f.vcpus),
      memory_mib: num(f.memory_mib),
      // A linked clone of a template keeps the template's disks, NICs and kernel command
      // line (the API refuses these fields then); they can be changed on the new VM.
      ...(fromImage ? { disk_mib: num(f.disk_mib), networks, kernel_args: f.kernel_args.trim() || null } : {}),
      start: f.start,
      cloud_init: cloudInit,
      ...(f.source === "image" ? { image: image || null } : { template: template || null }),
    };
    for (const k of ["vcpus", "memory_mib", "disk_mib"] as const) {
      if (Number.isNaN(body[k] ?? null)) {
        setError(localFieldError(k, `${k} must be a number`));
        return;
      }
    }
    setBusy(true);
    try {
      const started = await call(api.POST("/v1/vms", { body }));
      setOp(started);
      await waitOperation(started, 600, setOp);
      navigate(`/vms/${encodeURIComponent(body.name)}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  const general = error && !isFieldError(error, FIELDS);

  return (
    <section aria-labelledby="create-title">
      <h1 id="create-title">Create a virtual machine</h1>
      <form class="wizard" onSubmit={submit} noValidate>
        <fieldset>
          <legend>Identity and source</legend>
          <label for="vm-name">Name</label>
          <input id="vm-name" name="name" required value={f.name} onInput={(e) => set("name", (e.target as HTMLInputElement).value)} {...invalidProps(error, "name")} />
          <FieldError error={error} field="name" />
          <div role="radiogroup" aria-label="Create from" class="radios">
            <label class="check">
              <input type="radio" name="source" checked={f.source === "image"} onChange={() => setSource("image")} /> Image
            </label>
            <label class="check">
              <input type="radio" name="source" checked={f.source === "template"} onChange={() => setSource("template")} disabled={templates.length === 0} /> Template (linked clone)
            </label>
          </div>
          {f.source === "image" ? (
            <>
              <label for="vm-image">Image</label>
              <select id="vm-image" name="image" value={image} onChange={(e) => set("image", (e.target as HTMLSelectElement).value)} {...invalidProps(error, "image")}>
                {(images.data ?? []).map((i) => (
                  <option key={i.name} value={i.name}>
                    {i.name} ({i.content.kind === "kernel" ? `kernel ${i.content.kernel_version}` : "disk"})
                  </option>
                ))}
              </select>
              {images.data?.length === 0 && <p class="muted small">No images yet: build one on the Images page.</p>}
              <FieldError error={error} field="image" />
            </>
          ) : (
            <>
              <label for="vm-template">Template</label>
              <select id="vm-template" name="template" value={template} onChange={(e) => set("template", (e.target as HTMLSelectElement).value)} {...invalidProps(error, "template")}>
                {templates.map((t) => (
                  <option key={t.name}>{t.name}</option>
                ))}
              </select>
              <FieldError error={error} field="template" />
            </>
          )}
        </fieldset>
        <fieldset>
          <legend>Resources</legend>
          <label for="vm-vcpus">vCPUs{fromImage ? "" : ` (empty: the template's ${chosenTemplate?.vcpus ?? ""})`}</label>
          <input id="vm-vcpus" name="vcpus" inputMode="numeric" value={f.vcpus} onInput={(e) => set("vcpus", (e.target as HTMLInputElement).value)} {...invalidProps(error, "vcpus")} />
          <FieldError error={error} field="vcpus" />
          <label for="vm-memory">Memory (MiB){fromImage ? "" : ` (empty: the template's ${chosenTemplate?.memory_mib ?? ""})`}</label>
          <input id="vm-memory" name="memory_mib" inputMode="numeric" value={f.memory_mib} onInput={(e) => set("memory_mib", (e.target as HTMLInputElement).value)} {...invalidProps(error, "memory_mib")} />
          <FieldError error={error} field="memory_mib" />
          {fromImage && (
            <>
              <label for="vm-disk">Disk size (MiB, empty for the image's default)</label>
              <input id="vm-disk" name="disk_mib" inputMode="numeric" value={f.disk_mib} onInput={(e) => set("disk_mib", (e.target as HTMLInputElement).value)} {...invalidProps(error, "disk_mib")} />
              <FieldError error={error} field="disk_mib" />
            </>
          )}
        </fieldset>
        {fromImage ? (
          <fieldset>
            <legend>Network and boot</legend>
            <div role="group" aria-labelledby="vm-networks-label" class="radios wrap" {...invalidProps(error, "networks")}>
              <span id="vm-networks-label">Networks (one NIC each, in this order; none for no NIC)</span>
              {netChoices.map((n) => {
                const info = nets.data?.find((x) => x.name === n);
                return (
                  <label class="check" key={n}>
                    <input type="checkbox" name="networks" value={n} checked={networks.includes(n)} onChange={(e) => toggleNet(n, (e.target as HTMLInputElement).checked)} />{" "}
                    {n === "user" ? "user (QEMU user-mode NAT)" : `${n} (${info?.type}${info?.subnet ? ` ${info.subnet}` : ""})`}
                  </label>
                );
              })}
            </div>
            <FieldError error={error} field="networks" />
            <label for="vm-kargs">Extra kernel arguments (kernel images)</label>
            <input id="vm-kargs" name="kernel_args" value={f.kernel_args} onInput={(e) => set("kernel_args", (e.target as HTMLInputElement).value)} {...invalidProps(error, "kernel_args")} />
            <FieldError error={error} field="kernel_args" />
          </fieldset>
        ) : (
          <p class="muted">Disks, NICs and the kernel command line come from the template; change them on the new VM's Hardware tab.</p>
        )}
        <fieldset>
          <legend>Cloud-init (optional; a NoCloud seed the guest reads on first boot)</legend>
          <label for="vm-hostname">Host name (default: the VM's name)</label>
          <input id="vm-hostname" name="hostname" value={f.hostname} onInput={(e) => set("hostname", (e.target as HTMLInputElement).value)} {...invalidProps(error, "cloud_init.hostname")} />
          <FieldError error={error} field="cloud_init.hostname" />
          <label for="vm-ssh">SSH authorized keys (one per line)</label>
          <textarea id="vm-ssh" name="ssh_keys" rows={2} value={f.ssh_keys} onInput={(e) => set("ssh_keys", (e.target as HTMLTextAreaElement).value)} {...invalidProps(error, "cloud_init.ssh_authorized_keys")} />
          <FieldError error={error} field="cloud_init.ssh_authorized_keys" />
          <label for="vm-userdata">User-data (#cloud-config YAML or a script)</label>
          <textarea id="vm-userdata" name="user_data" rows={5} class="mono" value={f.user_data} onInput={(e) => set("user_data", (e.target as HTMLTextAreaElement).value)} {...invalidProps(error, "cloud_init.user_data")} />
          <FieldError error={error} field="cloud_init.user_data" />
          <FieldError error={error} field="cloud_init" />
        </fieldset>
        <fieldset>
          <legend>After create</legend>
          <label class="check">
            <input type="checkbox" name="start" checked={f.start} onChange={(e) => set("start", (e.target as HTMLInputElement).checked)} /> Start after create
          </label>
        </fieldset>
        {general ? <ErrorText error={error} /> : null}
        {op && busy && <OpProgress op={op} />}
        <div class="actions">
          <button type="submit" class="primary" disabled={busy}>
            {busy ? "Creating…" : "Create VM"}
          </button>
        </div>
      </form>
    </section>
  );
}
