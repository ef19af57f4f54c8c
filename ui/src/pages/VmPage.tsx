import { useState } from "preact/hooks";
import { api, call, formatMib, waitOperation, type Operation } from "../api/client";
import { useEventRefresh } from "../events";
import { href, navigate } from "../router";
import { Confirm, ErrorText, StateBadge, useData } from "../ui";
import { CloneVm } from "./Clone";
import { Console } from "./Console";
import { GuestChart } from "./GuestChart";
import { Snapshots } from "./Snapshots";
import { VmHardware } from "./VmHardware";

type Action = "start" | "stop" | "restart" | "pause" | "resume" | "kill";
const TABS = ["Overview", "Console", "Snapshots", "Hardware", "Metrics"] as const;
type Tab = (typeof TABS)[number];

/** Which actions make sense in a state (the API still decides; this only hides noise). */
function allowed(state: string, template: boolean): Action[] {
  // A template never runs.
  if (template) return [];
  switch (state) {
    case "running":
      return ["stop", "restart", "pause", "kill"];
    case "paused":
      return ["resume", "stop", "kill"];
    case "stopped":
    case "crashed":
      return ["start"];
    default:
      return ["kill"];
  }
}

export function VmPage({ name }: { name: string }) {
  const vm = useData(() => call(api.GET("/v1/vms/{name}", { params: { path: { name } } })), [name], 5000);
  useEventRefresh(`vm/${vm.data?.project ?? "default"}/${name}`, vm.reload);
  const [tab, setTab] = useState<Tab>("Overview");
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [confirm, setConfirm] = useState<null | "delete" | "kill" | "template">(null);
  const [cloning, setCloning] = useState(false);

  async function run(label: string, start: () => Promise<Operation>, after?: () => void) {
    setBusy(label);
    setError(null);
    try {
      await waitOperation(await start());
      after?.();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
      vm.reload();
    }
  }

  async function toTemplate() {
    setBusy("template");
    setError(null);
    try {
      await call(api.POST("/v1/vms/{name}/template", { params: { path: { name } } }));
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
      vm.reload();
    }
  }

  function act(a: Action) {
    const path = { params: { path: { name } } };
    const start = (): Promise<Operation> => {
      switch (a) {
        case "start":
          return call(api.POST("/v1/vms/{name}/start", path));
        case "stop":
          return call(api.POST("/v1/vms/{name}/stop", { ...path, body: {} }));
        case "restart":
          return call(api.POST("/v1/vms/{name}/restart", path));
        case "pause":
          return call(api.POST("/v1/vms/{name}/pause", path));
        case "resume":
          return call(api.POST("/v1/vms/{name}/resume", path));
        case "kill":
          return call(api.POST("/v1/vms/{name}/kill", path));
      }
    };
    if (a === "kill" && confirm !== "kill") return setConfirm("kill");
    setConfirm(null);
    void run(a, start);
  }

  const v = vm.data;
  if (!v) {
    return (
      <section>
        <h1>{name}</h1>
        {vm.error ? <ErrorText error={vm.error} /> : <p>Loading…</p>}
      </section>
    );
  }

  const onTabKey = (e: KeyboardEvent) => {
    const i = TABS.indexOf(tab);
    const next = e.key === "ArrowRight" ? TABS[(i + 1) % TABS.length] : e.key === "ArrowLeft" ? TABS[(i + TABS.length - 1) % TABS.length] : null;
    if (next) {
      e.preventDefault();
      setTab(next);
      document.getElementById(`tab-${next}`)?.focus();
    }
  };

  return (
    <section aria-labelledby="vm-title">
      <div class="head">
        <h1 id="vm-title">
          {v.name} <StateBadge state={v.state} /> {v.template && <span class="badge">template</span>} {v.guest_ready && <span class="badge ok">agent ready</span>}
        </h1>
        <div class="actions" role="group" aria-label="VM actions">
          {allowed(v.state, v.template === true).map((a) => (
            <button key={a} type="button" disabled={busy !== null} onClick={() => act(a)} class={a === "kill" ? "danger" : ""}>
              {busy === a ? `${a}…` : a[0].toUpperCase() + a.slice(1)}
            </button>
          ))}
          {(v.template || v.state === "stopped") && (
            <button type="button" disabled={busy !== null} onClick={() => setCloning(true)}>
              Clone
            </button>
          )}
          {!v.template && v.state === "stopped" && (
            <button type="button" disabled={busy !== null} onClick={() => setConfirm("template")}>
              Convert to template
            </button>
          )}
          {v.template && (
            <a class="button" href={href(`/vms/new?template=${encodeURIComponent(v.name)}`)}>
              New VM from template
            </a>
          )}
          <button type="button" class="danger" disabled={busy !== null} onClick={() => setConfirm("delete")}>
            Delete
          </button>
        </div>
      </div>
      <ErrorText error={error} />
      <div role="tablist" aria-label="VM sections" class="tabs" onKeyDown={onTabKey}>
        {TABS.map((t) => (
          <button
            key={t}
            id={`tab-${t}`}
            type="button"
            role="tab"
            aria-selected={tab === t}
            aria-controls={`panel-${t}`}
            tabIndex={tab === t ? 0 : -1}
            onClick={() => setTab(t)}
          >
            {t}
          </button>
        ))}
      </div>
      <div role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`} class="panel">
        {tab === "Overview" && (
          <dl class="facts">
            <dt>State</dt>
            <dd data-testid="vm-state">{v.state}</dd>
            <dt>vCPUs</dt>
            <dd>{v.vcpus}</dd>
            <dt>Memory</dt>
            <dd>{formatMib(v.memory_mib)}</dd>
            <dt>Boot</dt>
            <dd>{v.spec.boot.kind === "kernel" ? "direct kernel" : `disk (${v.spec.boot.firmware})`}</dd>
            <dt>Image</dt>
            <dd>{v.image ?? "—"}</dd>
            {v.template_source && (
              <>
                <dt>Template</dt>
                <dd>
                  <a href={href(`/vms/${encodeURIComponent(v.template_source)}`)}>{v.template_source}</a> (linked clone)
                </dd>
              </>
            )}
            <dt>Node</dt>
            <dd>
              {v.node} {v.accel ? `(${v.accel.toUpperCase()})` : ""} {v.pid ? `· QEMU pid ${v.pid}` : ""}
            </dd>
            <dt>Guest agent</dt>
            <dd>
              {v.guest
                ? [v.guest.os_name, v.guest.os_version, v.guest.kernel_release, v.guest.hostname && `host ${v.guest.hostname}`, v.guest.agent_version && `agent ${v.guest.agent_version}`]
                    .filter(Boolean)
                    .join(" · ")
                : v.guest_ready
                  ? "answers pings"
                  : "not answering"}
            </dd>
            <dt>IP addresses</dt>
            <dd class="mono">{(v.state === "running" || v.state === "paused" ? v.nics.flatMap((n) => n.addresses ?? []).join(", ") : "") || "—"}</dd>
            <dt>Snapshot</dt>
            <dd>{v.current_snapshot ?? "—"}</dd>
            <dt>UUID</dt>
            <dd class="mono small">{v.uuid}</dd>
            <dt>Created</dt>
            <dd>{new Date(v.created_at).toLocaleString()}</dd>
          </dl>
        )}
        {tab === "Console" && <Console name={v.name} running={v.state === "running" || v.state === "paused"} />}
        {tab === "Snapshots" && <Snapshots vm={v} onChange={vm.reload} />}
        {tab === "Hardware" && <VmHardware vm={v} onChange={vm.reload} />}
        {tab === "Metrics" && <GuestChart name={v.name} active={v.guest_ready && v.state === "running"} />}
      </div>
      {cloning && <CloneVm vm={v} onClose={() => (setCloning(false), vm.reload())} />}
      <Confirm
        open={confirm !== null}
        title={confirm === "kill" ? `Kill ${v.name}?` : confirm === "template" ? `Convert ${v.name} to a template?` : `Delete ${v.name}?`}
        confirmLabel={confirm === "kill" ? "Kill" : confirm === "template" ? "Convert" : "Delete"}
        onCancel={() => setConfirm(null)}
        onConfirm={() => {
          if (confirm === "kill") return act("kill");
          if (confirm === "template") {
            setConfirm(null);
            void toTemplate();
            return;
          }
          setConfirm(null);
          void run("delete", () => call(api.DELETE("/v1/vms/{name}", { params: { path: { name } } })), () => navigate("/vms"));
        }}
      >
        {confirm === "kill" ? (
          <p>QEMU is terminated at once; unsaved guest data is lost.</p>
        ) : confirm === "template" ? (
          <p>The VM becomes immutable: it never starts again, its disks become read-only bases, and new VMs are made from it as linked clones. This cannot be undone.</p>
        ) : (
          <p>The VM and its disks are deleted. This cannot be undone.</p>
        )}
      </Confirm>
    </section>
  );
}
