// Browser tests of the UI against a real vireod (started by crates/vireo-testkit/tests/
// real_ui.rs, which passes VIREO_UI_URL, VIREO_UI_TOKEN, VIREO_UI_SCREENSHOTS and
// VIREO_UI_READY_MARKER). Debian's Chromium, headless, driven by playwright-core; the daemon's
// TLS listener has a self-signed certificate, so certificate errors are ignored for it.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const URL_BASE = need("VIREO_UI_URL");
const TOKEN = need("VIREO_UI_TOKEN");
const SHOTS = process.env.VIREO_UI_SCREENSHOTS ?? "target/ui-screenshots";
const READY = process.env.VIREO_UI_READY_MARKER ?? "VIREO-GUEST-READY";
const VM = `ui${process.pid % 100000}`;
const CLONE = `${VM}-clone`;
const FROM_TEMPLATE = `${VM}-t`;
const NET = `uinet${process.pid % 100000}`;
const VOL = `uivol${process.pid % 100000}`;

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must be set (run through crates/vireo-testkit/tests/real_ui.rs)`);
  return v;
}

let context;
let page;
const profile = mkdtempSync(join(tmpdir(), "vireo-chromium-"));

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  // A fresh, empty profile per run (launchPersistentContext passes it as --user-data-dir).
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--ignore-certificate-errors",
    ],
    ignoreHTTPSErrors: true,
    viewport: { width: 1366, height: 800 },
  });
  page = await context.newPage();
  // The UI must not reach beyond the daemon: fail on any request to another origin.
  const origin = new URL(URL_BASE).origin;
  const foreign = [];
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (!["data:", "blob:"].includes(u.protocol) && u.origin !== origin && u.origin.replace(/^wss/, "https") !== origin) foreign.push(r.url());
  });
  page.foreign = foreign;
  page.setDefaultTimeout(30_000);
});

after(async () => {
  await context?.close();
  rmSync(profile, { recursive: true, force: true });
});

/** Waits until the element matching `selector` has text matching `re`. */
async function waitText(selector, re, timeout = 30_000) {
  await page.waitForFunction(
    ([sel, src]) => new RegExp(src).test(document.querySelector(sel)?.textContent ?? ""),
    [selector, re.source],
    { timeout },
  );
}

/** The steps build on each other: once one fails, the rest are skipped (not timed out). */
let broken = null;
function step(name, fn) {
  test(name, async (t) => {
    if (broken) return t.skip(`after the failure of: ${broken}`);
    try {
      await fn();
    } catch (e) {
      broken = name;
      // What the page showed when the step failed (the error is often on it).
      await shot(`failed-${name.replace(/\W+/g, "-").slice(0, 60)}`).catch(() => {});
      throw e;
    }
  });
}

/** A link in the main navigation (page text may link to the same places). */
function nav(name) {
  return page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true });
}

/** Confirms the open modal dialog with its `label` button. */
async function confirmDialog(label, shotName) {
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  if (shotName) await shot(shotName);
  await dialog.getByRole("button", { name: label, exact: true }).click();
  await dialog.waitFor({ state: "hidden" });
}

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

step("a wrong token is rejected with a visible message", async () => {
  await page.goto(`${URL_BASE}/ui/`);
  await page.getByLabel("API token").fill("vireo_wrongwrongwrong");
  await page.getByRole("button", { name: "Sign in" }).click();
  const alert = page.locator("#signin-error");
  await alert.waitFor();
  assert.match(await alert.innerText(), /not valid/);
  await shot("01-signin-rejected");
});

step("sign in shows the dashboard with host and live events", async () => {
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  await page.getByText(/of .* used/).first().waitFor();
  await page.locator("header .dot.on").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("vireo.token")), TOKEN);
  await shot("02-dashboard");
});

step("networks: a bad CIDR is shown next to its field, then an isolated network is created", async () => {
  await nav("Networks").click();
  await page.getByRole("heading", { name: "Networks", exact: true }).waitFor();
  await page.getByLabel("Name", { exact: true }).fill(NET);
  // Isolated: no traffic can leave the test's namespace.
  await page.getByLabel("Type").selectOption("isolated");
  await page.getByLabel(/^Subnet/).fill("10.77.0.0/33");
  await page.getByRole("button", { name: "Create network" }).click();
  const err = page.locator("#err-net-subnet");
  await err.waitFor();
  assert.match(await err.innerText(), /33|prefix|subnet/i);
  assert.equal(await page.getByLabel(/^Subnet/).getAttribute("aria-invalid"), "true");
  await shot("03-network-bad-cidr");
  await page.getByLabel(/^Subnet/).fill("10.77.0.0/24");
  await page.getByLabel(/^IPv6 \/64/).fill("fd00:77:0:1::/64");
  await page.getByLabel("IPv6 addresses by").selectOption("stateless");
  await page.getByRole("button", { name: "Create network" }).click();
  const row = page.locator(`[data-network="${NET}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /isolated\s+10\.77\.0\.0\/24\s+fd00:77:0:1::\/64/);
  await page.locator("#err-net-subnet").waitFor({ state: "detached" });
  await shot("04-networks");
  // Firewall rules are edited through the API (the UI shows them): a rule set by PATCH.
  await page.evaluate(
    async ([net, token]) => {
      const r = await fetch(`/v1/networks/${net}`, {
        method: "PATCH",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ firewall: { default_in: "drop", rules: [{ direction: "in", protocol: "tcp", ports: ["22"], action: "accept" }] } }),
      });
      if (!r.ok) throw new Error(`PATCH network: ${r.status} ${await r.text()}`);
    },
    [NET, TOKEN],
  );
  // The network's own page: details, leases, firewall, forwards.
  await row.getByRole("link", { name: NET }).click();
  await page.getByRole("heading", { name: "DHCP leases" }).waitFor();
  const firewall = page.getByRole("table", { name: "Firewall" });
  await firewall.waitFor();
  assert.match(await firewall.innerText(), /in\s+accept\s+tcp\s+anywhere\s+22/);
  assert.match(await page.getByText(/^Default in:/).innerText(), /Default in: drop/);
  assert.match(await page.locator("dt:text-is('IPv6') + dd").innerText(), /fd00:77:0:1::\/64 · gateway fd00:77:0:1::1 · SLAAC/);
  await shot("05-network-page");
});

step("the wizard shows a validation error next to its field", async () => {
  await page.getByRole("link", { name: "Virtual machines" }).click();
  await page.getByRole("link", { name: "Create VM" }).click();
  await page.getByLabel("Name", { exact: true }).fill(VM);
  await page.getByLabel("Memory (MiB)").fill("0");
  await page.getByRole("button", { name: "Create VM" }).click();
  const err = page.locator("#err-memory_mib");
  await err.waitFor();
  assert.match(await err.innerText(), /memory/i);
  assert.equal(await page.getByLabel("Memory (MiB)").getAttribute("aria-invalid"), "true");
  await shot("06-wizard-validation");
});

step("create a VM from the tiny image and watch it reach running", async () => {
  await page.getByLabel("Memory (MiB)").fill("256");
  await page.locator("#vm-image").selectOption("tiny");
  await page.getByRole("button", { name: "Create VM" }).click();
  await page.waitForURL(`**/ui/vms/${VM}`, { timeout: 120_000 });
  await waitText("[data-testid=vm-state]", /^running$/, 120_000);
  await shot("07-vm-overview");
});

step("the console shows the guest's readiness line", async () => {
  await page.getByRole("tab", { name: "Console" }).click();
  await waitText("[data-testid=console-status]", /: connected$/);
  await page.waitForFunction(
    (marker) => document.querySelector("[data-testid=terminal] .xterm-rows")?.textContent?.includes(marker),
    READY,
    { timeout: 120_000 },
  );
  await shot("08-vm-console");
  // Keyboard: F6 leaves the terminal (Tab belongs to the guest).
  await page.locator("[data-testid=terminal] textarea").focus();
  await page.keyboard.press("F6");
  assert.equal(await page.evaluate(() => document.activeElement?.textContent?.trim()), "Reconnect");
});

step("take a snapshot", async () => {
  // Keyboard navigation of the tabs: arrow keys move between them.
  await page.getByRole("tab", { name: "Console" }).focus();
  await page.keyboard.press("ArrowRight");
  assert.equal(await page.getByRole("tab", { name: "Snapshots" }).getAttribute("aria-selected"), "true");
  await page.getByLabel("Snapshot name").fill("before-stop");
  await page.getByRole("button", { name: "Take snapshot" }).click();
  await page.locator('[data-snapshot="before-stop"]').waitFor({ timeout: 120_000 });
  await page.getByRole("button", { name: "Take snapshot" }).waitFor();
  await shot("09-vm-snapshots");
});

step("hardware and metrics tabs", async () => {
  await page.getByRole("tab", { name: "Hardware" }).click();
  await page.getByRole("heading", { name: "Disks" }).waitFor();
  await shot("10-vm-hardware");
  await page.getByRole("tab", { name: "Metrics" }).click();
  await page.getByText(/^CPU \d/).waitFor({ timeout: 60_000 });
  // At least two samples drawn for both series.
  await page.waitForFunction(
    () => ["cpu", "mem"].every((c) => (document.querySelector(`.chart .${c}`)?.getAttribute("points") ?? "").split(" ").length >= 2),
    null,
    { timeout: 30_000 },
  );
  await shot("11-vm-metrics");
});

step("stop the VM", async () => {
  await page.getByRole("button", { name: "Stop", exact: true }).click();
  await page.getByRole("tab", { name: "Overview" }).click();
  await waitText("[data-testid=vm-state]", /^stopped$/, 120_000);
});

step("create a volume in the default pool", async () => {
  await nav("Storage").click();
  await page.getByRole("heading", { name: "Volumes in default" }).waitFor();
  await page.getByLabel("Volume name").fill(VOL);
  await page.getByLabel("Size", { exact: true }).fill("64");
  await page.getByLabel("Size unit").selectOption("MiB");
  await page.getByRole("button", { name: "Create volume" }).click();
  const row = page.locator(`[data-volume="${VOL}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /custom[^]*64\.0 MiB/);
});

step("attach the volume and a NIC on the network to the stopped VM; the network is in use", async () => {
  await page.goto(`${URL_BASE}/ui/vms/${VM}`);
  await page.getByRole("tab", { name: "Hardware" }).click();
  await page.getByRole("button", { name: "Attach volume" }).click();
  let dialog = page.getByRole("dialog");
  await dialog.getByLabel("Volume", { exact: true }).selectOption(`default/${VOL}`);
  await dialog.getByRole("button", { name: "Attach", exact: true }).click();
  await page.locator(`[data-disk="${VOL}"]`).waitFor({ timeout: 60_000 });
  await page.getByRole("button", { name: "Add NIC" }).click();
  dialog = page.getByRole("dialog");
  await dialog.getByLabel("Network", { exact: true }).selectOption(NET);
  await dialog.getByRole("button", { name: "Add NIC", exact: true }).click();
  const nic = page.locator("[data-nic]", { hasText: NET });
  await nic.waitFor();
  assert.match(await nic.innerText(), /10\.77\.0\./);
  await shot("12-vm-hardware-attached");
  // The pool view names the VM the volume is attached to.
  await nav("Storage").click();
  await page.locator(`[data-volume="${VOL}"]`, { hasText: VM }).waitFor();
  await shot("13-pool-volumes");
  // The network's page lists the NIC's address (a reservation until the guest asks for it).
  await nav("Networks").click();
  await page.getByRole("link", { name: NET, exact: true }).click();
  const lease = page.locator('[data-lease^="10.77.0."]');
  await lease.waitFor();
  assert.match(await lease.innerText(), /reserved|dynamic/);
  await page.getByTestId("network-used-by").getByRole("link", { name: VM }).waitFor();
  await shot("14-network-leases");
  // Deleting the network while the NIC uses it: the API's 409 message is shown.
  await nav("Networks").click();
  await page.locator(`[data-network="${NET}"]`, { hasText: VM }).waitFor();
  await page.getByRole("button", { name: `Delete network ${NET}` }).click();
  await confirmDialog("Delete", "15-network-delete-confirm");
  const alert = page.locator("p.error[role=alert]");
  await alert.waitFor();
  assert.match(await alert.innerText(), /in use/);
  assert.equal(await page.locator(`[data-network="${NET}"]`).count(), 1);
});

step("remove the NIC, detach the volume, delete the network and the volume", async () => {
  await page.goto(`${URL_BASE}/ui/vms/${VM}`);
  await page.getByRole("tab", { name: "Hardware" }).click();
  const nic = page.locator("[data-nic]", { hasText: NET });
  await nic.getByRole("button", { name: /^Remove NIC/ }).click();
  await confirmDialog("Remove");
  await nic.waitFor({ state: "detached" });
  await page.getByRole("button", { name: `Detach disk ${VOL}` }).click();
  await confirmDialog("Detach");
  await page.locator(`[data-disk="${VOL}"]`).waitFor({ state: "detached", timeout: 60_000 });

  await nav("Networks").click();
  await page.getByRole("button", { name: `Delete network ${NET}` }).click();
  await confirmDialog("Delete");
  await page.locator(`[data-network="${NET}"]`).waitFor({ state: "detached" });

  await nav("Storage").click();
  await page.getByRole("button", { name: `Delete volume ${VOL}` }).click();
  await confirmDialog("Delete");
  await page.locator(`[data-volume="${VOL}"]`).waitFor({ state: "detached" });
});

step("clone the stopped VM (linked) and see the clone in the list", async () => {
  await page.goto(`${URL_BASE}/ui/vms/${VM}`);
  await page.getByRole("button", { name: "Clone", exact: true }).click();
  const dialog = page.getByRole("dialog");
  await dialog.getByLabel("Name of the new VM").fill(CLONE);
  await dialog.getByRole("radio", { name: /Linked/ }).check();
  await shot("16-clone-dialog");
  await dialog.getByRole("button", { name: "Clone", exact: true }).click();
  await page.waitForURL(`**/ui/vms/${CLONE}`, { timeout: 120_000 });
  await nav("Virtual machines").click();
  await page.locator(`[data-vm="${CLONE}"]`).waitFor();
  await page.locator(`[data-vm="${VM}"]`).waitFor();
  await shot("17-vm-list-clone");
});

step("convert the clone to a template, create a VM from it in the wizard, delete both", async () => {
  await page.getByRole("link", { name: CLONE, exact: true }).click();
  await page.getByRole("button", { name: "Convert to template" }).click();
  await confirmDialog("Convert");
  const fromTemplate = page.getByRole("link", { name: "New VM from template" });
  await fromTemplate.waitFor();
  assert.equal(await page.getByRole("button", { name: "Start", exact: true }).count(), 0);
  // The wizard opens with the template chosen.
  await fromTemplate.click();
  await page.getByRole("heading", { name: "Create a virtual machine" }).waitFor();
  assert.equal(await page.getByRole("radio", { name: /Template/ }).isChecked(), true);
  // The template list loads with the page.
  await page.waitForFunction((t) => document.querySelector("#vm-template")?.value === t, CLONE);
  await page.getByLabel("Name", { exact: true }).fill(FROM_TEMPLATE);
  await page.getByLabel("Start after create").uncheck();
  await page.getByRole("button", { name: "Create VM" }).click();
  await page.waitForURL(`**/ui/vms/${FROM_TEMPLATE}`, { timeout: 120_000 });
  await page.getByRole("tab", { name: "Overview" }).click();
  assert.equal(await page.locator("dt:text-is('Template') + dd").innerText(), `${CLONE} (linked clone)`);
  await page.getByRole("button", { name: "Delete", exact: true }).first().click();
  await confirmDialog("Delete");
  await page.waitForURL("**/ui/vms", { timeout: 120_000 });
  await page.waitForFunction((vm) => !document.querySelector(`[data-vm="${vm}"]`), FROM_TEMPLATE);
  // Now no linked clone uses the template: it can go.
  await page.getByRole("link", { name: CLONE, exact: true }).click();
  await page.getByRole("button", { name: "Delete", exact: true }).first().click();
  await confirmDialog("Delete");
  await page.waitForURL("**/ui/vms", { timeout: 120_000 });
  await page.waitForFunction((vm) => !document.querySelector(`[data-vm="${vm}"]`), CLONE);
});

step("delete the VM", async () => {
  await page.getByRole("link", { name: VM, exact: true }).click();
  await page.getByRole("heading", { name: new RegExp(`^${VM}`) }).waitFor();
  await page.getByRole("button", { name: "Delete", exact: true }).first().click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  await shot("18-delete-confirm");
  await dialog.getByRole("button", { name: "Delete" }).click();
  await page.waitForURL("**/ui/vms", { timeout: 120_000 });
  await page.getByRole("heading", { name: "Virtual machines" }).waitFor();
  await page.waitForFunction((vm) => !document.querySelector(`[data-vm="${vm}"]`), VM);
  await shot("19-vm-list");
});

step("operations, images and storage pages", async () => {
  await page.getByRole("link", { name: "Operations" }).click();
  await page.getByText("vm.delete").first().waitFor();
  await shot("20-operations");
  await page.getByRole("link", { name: "Images" }).click();
  await page.getByRole("cell", { name: "tiny", exact: true }).waitFor();
  // The Debian builder's options: the API refuses a disk under 2 GiB; the message shows next
  // to its field.
  const build = page.getByRole("form", { name: "Build an image" });
  await build.getByLabel("Builder").selectOption("debian");
  await build.getByLabel("Disk size (GiB)").fill("1");
  await build.getByLabel("Extra packages").fill("curl, jq");
  await build.getByRole("button", { name: "Build image" }).click();
  const sizeErr = page.locator("#err-build-size");
  await sizeErr.waitFor();
  assert.match(await sizeErr.innerText(), /between/);
  assert.equal(await build.getByLabel("Disk size (GiB)").getAttribute("aria-invalid"), "true");
  await shot("21-images");
  await page.getByRole("link", { name: "Storage" }).click();
  await page.getByRole("heading", { name: "Storage pools" }).waitFor();
  await shot("22-storage");
  assert.deepEqual(page.foreign, [], "the UI made requests to other origins");
});

step("narrow window: pages fit without sideways scrolling", async () => {
  await page.setViewportSize({ width: 820, height: 900 });
  for (const [link, heading, name] of [
    ["Networks", "Networks", "23-networks-narrow"],
    ["Storage", "Storage pools", "24-storage-narrow"],
    ["Virtual machines", "Virtual machines", "25-vm-list-narrow"],
  ]) {
    await nav(link).click();
    await page.getByRole("heading", { name: heading, exact: true }).waitFor();
    const [doc, win] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(doc <= win, `${link}: page is ${doc}px wide in a ${win}px window`);
    await shot(name);
  }
  await page.setViewportSize({ width: 1366, height: 800 });
});
