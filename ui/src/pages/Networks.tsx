// Managed networks: the list with a create form, and one network's page (details, DHCP leases,
// firewall rules, port forwards and reservations as read views). Create and delete go through
// /v1/networks; the API validates (its field errors are shown next to the fields) and refuses
// to delete a network VMs use (its 409 message is shown as is).
import { useState } from "preact/hooks";
import { api, call, type Schemas } from "../api/client";
import { useEventRefresh } from "../events";
import { href, navigate } from "../router";
import { Confirm, ErrorText, FieldError, invalidProps, isFieldError, useData } from "../ui";

type NetworkType = Schemas["NetworkType"];
type NetworkInfo = Schemas["NetworkInfo"];

const TYPES: { value: NetworkType; label: string }[] = [
  { value: "nat", label: "NAT (masqueraded)" },
  { value: "isolated", label: "Isolated (no way out)" },
  { value: "bridged", label: "Bridged (uplink's LAN)" },
  { value: "ovs", label: "Open vSwitch (VLANs)" },
];

/** What the uplink means for each type (the API decides whether it is required). */
const UPLINK_HINT: Record<NetworkType, string | null> = {
  nat: "Uplink interface (optional; default: the default route's interface)",
  isolated: null,
  bridged: "Uplink interface (the host NIC enslaved to the bridge)",
  ovs: "Trunk interface (optional)",
};

const CREATE_FIELDS = ["name", "type", "subnet", "dhcp", "ipv6", "ipv6_dhcp", "uplink", "description"];

const IPV6_MODES: { value: Schemas["Ipv6Dhcp"]; label: string }[] = [
  { value: "stateless", label: "SLAAC (router advertisements)" },
  { value: "stateful", label: "DHCPv6 (needs DHCP on)" },
];

/** `project/name` → a link to the VM (other projects shown as text: the UI is per default project). */
function VmRef({ id }: { id: string }) {
  const [project, name] = id.includes("/") ? id.split("/", 2) : ["default", id];
  return project === "default" ? <a href={href(`/vms/${encodeURIComponent(name)}`)}>{name}</a> : <span>{id}</span>;
}

function UsedBy({ vms }: { vms: string[] }) {
  if (vms.length === 0) return <span class="muted">—</span>;
  return (
    <>
      {vms.map((v, i) => (
        <span key={v}>
          {i > 0 && ", "}
          <VmRef id={v} />
        </span>
      ))}
    </>
  );
}

export function Networks() {
  const nets = useData(() => call(api.GET("/v1/networks")), [], 15000);
  useEventRefresh("network/", nets.reload);
  const [del, setDel] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);

  async function remove(name: string) {
    setError(null);
    try {
      await call(api.DELETE("/v1/networks/{name}", { params: { path: { name } } }));
    } catch (e) {
      setError(e);
    }
    nets.reload();
  }

  return (
    <section aria-labelledby="networks-title">
      <h1 id="networks-title">Networks</h1>
      <CreateNetwork onCreated={nets.reload} />
      <ErrorText error={error ?? nets.error} />
      <div class="table-wrap">
        <table aria-labelledby="networks-title">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Type</th>
              <th scope="col">Subnet</th>
              <th scope="col">Bridge</th>
              <th scope="col">DHCP</th>
              <th scope="col">VMs</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {(nets.data ?? []).map((n) => (
              <tr key={n.name} data-network={n.name}>
                <td>
                  <a href={href(`/networks/${encodeURIComponent(n.name)}`)}>{n.name}</a>
                  {n.default && <span class="badge">default</span>}
                </td>
                <td>{n.type}</td>
                <td class="mono">
                  {n.subnet ?? "—"}
                  {n.ipv6 && <div>{n.ipv6}</div>}
                </td>
                <td class="mono">{n.bridge}</td>
                <td>{n.dhcp ? "on" : "off"}</td>
                <td>
                  <UsedBy vms={n.used_by} />
                </td>
                <td>
                  <button type="button" class="danger" aria-label={`Delete network ${n.name}`} onClick={() => setDel(n.name)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {nets.data?.length === 0 && <p class="muted">No networks. VMs can still use QEMU's user-mode network ("user").</p>}
      <Confirm
        open={del !== null}
        title={`Delete network ${del}?`}
        confirmLabel="Delete"
        onCancel={() => setDel(null)}
        onConfirm={() => {
          const n = del;
          setDel(null);
          if (n) void remove(n);
        }}
      >
        <p>Its bridge, DHCP server and rules are removed. The API refuses while VMs have NICs on it.</p>
      </Confirm>
    </section>
  );
}

function CreateNetwork({ onCreated }: { onCreated: () => void }) {
  const [name, setName] = useState("");
  const [type, setType] = useState<NetworkType>("nat");
  const [subnet, setSubnet] = useState("");
  const [dhcp, setDhcp] = useState<boolean | null>(null);
  const [uplink, setUplink] = useState("");
  const [ipv6, setIpv6] = useState("");
  const [ipv6Dhcp, setIpv6Dhcp] = useState<Schemas["Ipv6Dhcp"]>("stateless");
  const [description, setDescription] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [created, setCreated] = useState<string | null>(null);

  // Until the box is touched it follows the API's default: DHCP on for nat and isolated.
  const dhcpShown = dhcp ?? (type === "nat" || type === "isolated");
  const routed = type === "nat" || type === "isolated";

  async function submit(e: Event) {
    e.preventDefault();
    setError(null);
    setCreated(null);
    setBusy(true);
    try {
      const body: Schemas["CreateNetworkRequest"] = {
        name: name.trim(),
        type,
        subnet: routed && subnet.trim() ? subnet.trim() : null,
        dhcp: dhcpShown,
        ...(routed && ipv6.trim() ? { ipv6: ipv6.trim(), ipv6_dhcp: ipv6Dhcp } : {}),
        uplink: UPLINK_HINT[type] && uplink.trim() ? uplink.trim() : null,
        ...(description.trim() ? { description: description.trim() } : {}),
      };
      const net = await call(api.POST("/v1/networks", { body }));
      setCreated(net.name);
      setName("");
      setSubnet("");
      setUplink("");
      setIpv6("");
      setDescription("");
      setDhcp(null);
      onCreated();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form class="wizard compact" aria-labelledby="create-network-title" onSubmit={submit} noValidate>
      <fieldset>
        <legend id="create-network-title">Create a network</legend>
        <div class="fields">
          <div>
            <label for="net-name">Name</label>
            <input id="net-name" required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} {...invalidProps(error, "name", "net-name")} />
            <FieldError error={error} field="name" id="net-name" />
          </div>
          <div>
            <label for="net-type">Type</label>
            <select id="net-type" value={type} onChange={(e) => setType((e.target as HTMLSelectElement).value as NetworkType)} {...invalidProps(error, "type", "net-type")}>
              {TYPES.map((t) => (
                <option key={t.value} value={t.value}>
                  {t.label}
                </option>
              ))}
            </select>
            <FieldError error={error} field="type" id="net-type" />
          </div>
          {routed && (
            <div>
              <label for="net-subnet">Subnet (IPv4 CIDR; empty to pick a free one)</label>
              <input
                id="net-subnet"
                class="mono"
                placeholder="10.20.0.0/24"
                value={subnet}
                onInput={(e) => setSubnet((e.target as HTMLInputElement).value)}
                {...invalidProps(error, "subnet", "net-subnet")}
              />
              <FieldError error={error} field="subnet" id="net-subnet" />
            </div>
          )}
          {routed && (
            <div>
              <label for="net-ipv6">IPv6 /64 (optional)</label>
              <input
                id="net-ipv6"
                class="mono"
                placeholder="fd00:1:2:3::/64"
                value={ipv6}
                onInput={(e) => setIpv6((e.target as HTMLInputElement).value)}
                {...invalidProps(error, "ipv6", "net-ipv6")}
              />
              <FieldError error={error} field="ipv6" id="net-ipv6" />
            </div>
          )}
          {routed && ipv6.trim() && (
            <div>
              <label for="net-ipv6-dhcp">IPv6 addresses by</label>
              <select id="net-ipv6-dhcp" value={ipv6Dhcp} onChange={(e) => setIpv6Dhcp((e.target as HTMLSelectElement).value as Schemas["Ipv6Dhcp"])} {...invalidProps(error, "ipv6_dhcp", "net-ipv6-dhcp")}>
                {IPV6_MODES.map((m) => (
                  <option key={m.value} value={m.value}>
                    {m.label}
                  </option>
                ))}
              </select>
              <FieldError error={error} field="ipv6_dhcp" id="net-ipv6-dhcp" />
            </div>
          )}
          {UPLINK_HINT[type] && (
            <div>
              <label for="net-uplink">{UPLINK_HINT[type]}</label>
              <input id="net-uplink" class="mono" value={uplink} onInput={(e) => setUplink((e.target as HTMLInputElement).value)} {...invalidProps(error, "uplink", "net-uplink")} />
              <FieldError error={error} field="uplink" id="net-uplink" />
            </div>
          )}
          <div>
            <label for="net-description">Description (optional)</label>
            <input id="net-description" value={description} onInput={(e) => setDescription((e.target as HTMLInputElement).value)} {...invalidProps(error, "description", "net-description")} />
            <FieldError error={error} field="description" id="net-description" />
          </div>
        </div>
        <label class="check">
          <input type="checkbox" checked={dhcpShown} onChange={(e) => setDhcp((e.target as HTMLInputElement).checked)} {...invalidProps(error, "dhcp", "net-dhcp")} /> DHCP and DNS
          (dnsmasq)
        </label>
        <FieldError error={error} field="dhcp" id="net-dhcp" />
        {error && !isFieldError(error, CREATE_FIELDS) ? <ErrorText error={error} /> : null}
        {created && (
          <p class="ok-text" role="status">
            Network <a href={href(`/networks/${encodeURIComponent(created)}`)}>{created}</a> created.
          </p>
        )}
        <div class="actions">
          <button type="submit" class="primary" disabled={busy}>
            {busy ? "Creating…" : "Create network"}
          </button>
        </div>
      </fieldset>
    </form>
  );
}

function expires(unix: number): string {
  return unix === 0 ? "never" : new Date(unix * 1000).toLocaleString();
}

export function NetworkPage({ name }: { name: string }) {
  const net = useData(() => call(api.GET("/v1/networks/{name}", { params: { path: { name } } })), [name], 15000);
  const leases = useData(() => call(api.GET("/v1/networks/{name}/leases", { params: { path: { name } } })), [name], 15000);
  useEventRefresh(`network/${name}`, net.reload);
  const [confirm, setConfirm] = useState(false);
  const [error, setError] = useState<unknown>(null);

  async function remove() {
    setConfirm(false);
    setError(null);
    try {
      await call(api.DELETE("/v1/networks/{name}", { params: { path: { name } } }));
      navigate("/networks");
    } catch (e) {
      setError(e);
      net.reload();
    }
  }

  const n = net.data;
  if (!n) {
    return (
      <section>
        <h1>{name}</h1>
        {net.error ? <ErrorText error={net.error} /> : <p>Loading…</p>}
        <p>
          <a href={href("/networks")}>All networks</a>
        </p>
      </section>
    );
  }
  return (
    <section aria-labelledby="net-title">
      <div class="head">
        <h1 id="net-title">
          {n.name} <span class="badge">{n.type}</span> {n.default && <span class="badge">default</span>}
        </h1>
        <div class="actions">
          <a class="button" href={href("/networks")}>
            All networks
          </a>
          <button type="button" class="danger" onClick={() => setConfirm(true)}>
            Delete
          </button>
        </div>
      </div>
      <ErrorText error={error} />
      <NetworkFacts n={n} />
      <h2 id="leases-title">DHCP leases</h2>
      <ErrorText error={leases.error} />
      {!n.dhcp && <p class="muted">DHCP is off on this network.</p>}
      {leases.data?.length === 0 && <p class="muted">No leases or reservations.</p>}
      {(leases.data?.length ?? 0) > 0 && (
        <div class="table-wrap">
          <table aria-labelledby="leases-title">
            <thead>
              <tr>
                <th scope="col">MAC</th>
                <th scope="col">Address</th>
                <th scope="col">Host name</th>
                <th scope="col">Kind</th>
                <th scope="col">Expires</th>
              </tr>
            </thead>
            <tbody>
              {(leases.data ?? []).map((l) => (
                <tr key={`${l.mac}-${l.ip}`} data-lease={l.ip}>
                  <td class="mono">{l.mac}</td>
                  <td class="mono">{l.ip}</td>
                  <td>{l.hostname ?? "—"}</td>
                  <td>{l.kind}</td>
                  <td>{expires(l.expires)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Firewall title="Firewall" firewall={n.firewall} />
      <h2 id="forwards-title">Port forwards</h2>
      {n.port_forwards.length === 0 ? (
        <p class="muted">None.</p>
      ) : (
        <div class="table-wrap">
          <table aria-labelledby="forwards-title">
            <thead>
              <tr>
                <th scope="col">Protocol</th>
                <th scope="col">Host</th>
                <th scope="col">Target</th>
              </tr>
            </thead>
            <tbody>
              {n.port_forwards.map((f, i) => (
                <tr key={i}>
                  <td>{f.protocol}</td>
                  <td class="mono">
                    {f.host_address ?? "*"}:{f.host_port}
                  </td>
                  <td class="mono">
                    {f.target}:{f.target_port}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h2 id="reservations-title">Reservations</h2>
      {n.reservations.length === 0 ? (
        <p class="muted">None.</p>
      ) : (
        <div class="table-wrap">
          <table aria-labelledby="reservations-title">
            <thead>
              <tr>
                <th scope="col">MAC</th>
                <th scope="col">Address</th>
                <th scope="col">Host name</th>
              </tr>
            </thead>
            <tbody>
              {n.reservations.map((r) => (
                <tr key={r.mac}>
                  <td class="mono">{r.mac}</td>
                  <td class="mono">{r.ip}</td>
                  <td>{r.hostname ?? "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Confirm open={confirm} title={`Delete network ${n.name}?`} confirmLabel="Delete" onCancel={() => setConfirm(false)} onConfirm={() => void remove()}>
        <p>Its bridge, DHCP server and rules are removed. The API refuses while VMs have NICs on it.</p>
      </Confirm>
    </section>
  );
}

function NetworkFacts({ n }: { n: NetworkInfo }) {
  return (
    <dl class="facts">
      <dt>Type</dt>
      <dd>{n.type}</dd>
      <dt>Subnet</dt>
      <dd class="mono">{n.subnet ?? "—"}</dd>
      <dt>Gateway</dt>
      <dd class="mono">{n.gateway ?? "—"}</dd>
      <dt>IPv6</dt>
      <dd class="mono">{n.ipv6 ? `${n.ipv6} · gateway ${n.ipv6_gateway ?? "—"} · ${n.ipv6_dhcp === "stateful" ? "DHCPv6" : "SLAAC"}` : "—"}</dd>
      <dt>Bridge</dt>
      <dd class="mono">{n.bridge}</dd>
      <dt>Uplink</dt>
      <dd class="mono">{n.uplink ?? "—"}</dd>
      <dt>DHCP</dt>
      <dd>{n.dhcp ? "on" : "off"}</dd>
      <dt>DNS domain</dt>
      <dd class="mono">{n.domain}</dd>
      <dt>MTU</dt>
      <dd>{n.mtu ?? "default"}</dd>
      <dt>VMs</dt>
      <dd data-testid="network-used-by">
        <UsedBy vms={n.used_by} />
      </dd>
      <dt>Description</dt>
      <dd>{n.description || "—"}</dd>
      <dt>Created</dt>
      <dd>{new Date(n.created_at).toLocaleString()}</dd>
    </dl>
  );
}

/** A firewall (network or NIC) as a read view: default policies, then the ordered rules. */
export function Firewall({ title, firewall }: { title: string; firewall: Schemas["Firewall"] }) {
  const rules = firewall.rules ?? [];
  const id = `fw-${title.replace(/\W+/g, "-").toLowerCase()}`;
  return (
    <>
      <h2 id={id}>{title}</h2>
      <p>
        Default in: <strong>{firewall.default_in ?? "accept"}</strong> · default out: <strong>{firewall.default_out ?? "accept"}</strong>
        {rules.length > 0 && " · rules in order, first match wins"}
      </p>
      {rules.length > 0 && (
        <div class="table-wrap">
          <table aria-labelledby={id}>
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">Direction</th>
                <th scope="col">Action</th>
                <th scope="col">Protocol</th>
                <th scope="col">Peer</th>
                <th scope="col">Ports</th>
              </tr>
            </thead>
            <tbody>
              {rules.map((r, i) => (
                <tr key={i}>
                  <td>{i + 1}</td>
                  <td>{r.direction}</td>
                  <td>{r.action}</td>
                  <td>{r.protocol ?? "any"}</td>
                  <td class="mono">{r.cidr ?? "anywhere"}</td>
                  <td class="mono">{(r.ports ?? []).join(", ") || "all"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}
