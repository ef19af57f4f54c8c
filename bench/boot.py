"""Boot benchmark driver (see bench/boot). Starts a private vireod on a temp dir (TCG), builds
the tiny image, then alternates raw QEMU and Vireo boots, timing each from its start (process
start, resp. the API call) until the guest prints its readiness line on the serial console."""

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
MARKER = b"VIREO-GUEST-READY"
CACHE = os.environ.get("VIREO_TEST_CACHE", "/var/cache/vireo-test")


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("vireo", timeout=120)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


def api(sock, method, path, body=None):
    c = UnixHTTP(sock)
    data = json.dumps(body) if body is not None else None
    c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = c.getresponse()
    out = r.read()
    c.close()
    return r.status, (json.loads(out) if out else None)


def wait_file_marker(path, deadline):
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                if MARKER in f.read():
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"no readiness line in {path}")


def raw_boot(tmp, image, argv_template, vm_dir, i):
    """Exactly the command line vireod used for the same guest (captured from /proc), with the
    VM directory swapped for a fresh one: the comparison isolates Vireo's own cost."""
    d = os.path.join(tmp, f"raw{i}")
    os.makedirs(d)
    disk = os.path.join(d, "data.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, f"{image['disk_mib']}M"], check=True)
    args = [a.replace(vm_dir, d) for a in argv_template]
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t1 = wait_file_marker(os.path.join(d, "console.log"), t0 + 120)
    finally:
        p.kill()
        p.wait()
    return t1 - t0


def capture_argv(sock, name):
    """The QEMU command line of a running Vireo VM, and its VM directory."""
    st, vm = api(sock, "GET", f"/v1/vms/{name}")
    with open(f"/proc/{vm['pid']}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    vm_dir = os.path.dirname(vm["spec"]["disks"][0]["path"])
    return argv, vm_dir


def vireo_boot(sock, state_dir, i, on_ready=None):
    name = f"bench{i}"
    t0 = time.monotonic()
    st, op = api(sock, "POST", "/v1/vms", {"name": name, "image": "tiny", "memory_mib": 256, "start": True})
    if st != 202:
        raise RuntimeError(f"create failed: {st} {op}")
    # The VM directory is known once the record exists (a few ms into the operation).
    uuid = None
    while uuid is None and time.monotonic() < t0 + 60:
        st, vm = api(sock, "GET", f"/v1/vms/{name}")
        if st == 200:
            uuid = vm["uuid"]
        else:
            time.sleep(0.002)
    t1 = wait_file_marker(os.path.join(state_dir, "vms", uuid, "console.log"), t0 + 120)
    api(sock, "GET", f"/v1/operations/{op['id']}/wait?timeout=60")
    if on_ready is not None:
        on_ready(name)
    st, op = api(sock, "POST", f"/v1/vms/{name}/kill")
    api(sock, "GET", f"/v1/operations/{op['id']}/wait?timeout=60")
    st, op = api(sock, "DELETE", f"/v1/vms/{name}")
    api(sock, "GET", f"/v1/operations/{op['id']}/wait?timeout=60")
    return t1 - t0


def pct(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    tmp = tempfile.mkdtemp(prefix="vb", dir="/tmp")
    state = os.path.join(tmp, "state")
    sock = os.path.join(tmp, "s.sock")
    with open(os.path.join(tmp, "vireod.toml"), "w") as f:
        f.write(f'state_dir = "{state}"\nsocket = "{sock}"\naccel = "tcg"\nimage_cache_dir = "{CACHE}"\n')
    log = open(os.path.join(tmp, "vireod.log"), "w")
    daemon = subprocess.Popen([os.path.join(BIN, "vireod"), "--config", os.path.join(tmp, "vireod.toml")], stdout=log, stderr=log)
    try:
        for _ in range(300):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        st, op = api(sock, "POST", "/v1/images/build", {"builder": "tiny"})
        st, op = api(sock, "GET", f"/v1/operations/{op['id']}/wait?timeout=1800")
        if op["status"] != "succeeded":
            raise RuntimeError(f"image build failed: {op}")
        st, imgs = api(sock, "GET", "/v1/images")
        img = [i for i in imgs if i["name"] == "tiny"][0]
        files = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(state, "images")) for f in fs]
        image = {
            "kernel": [f for f in files if "vmlinuz" in os.path.basename(f)][0],
            "initrd": [f for f in files if "initrd" in os.path.basename(f)][0],
            "cmdline": img["content"]["cmdline"],
            "disk_mib": img["content"]["default_data_disk_mib"],
        }
        raw, vir = [], []
        # Warm-up (page cache) not counted; it also captures Vireo's QEMU command line.
        captured = {}
        vireo_boot(sock, state, "w", on_ready=lambda n: captured.update(zip(("argv", "dir"), capture_argv(sock, n))))
        raw_boot(tmp, image, captured["argv"], captured["dir"], "w")
        for i in range(rounds):
            raw.append(raw_boot(tmp, image, captured["argv"], captured["dir"], i))
            vir.append(vireo_boot(sock, state, i))
            print(f"round {i + 1}/{rounds}: raw {raw[-1] * 1000:.0f} ms, vireo {vir[-1] * 1000:.0f} ms", flush=True)
        r50, r95, v50, v95 = pct(raw, 50), pct(raw, 95), pct(vir, 50), pct(vir, 95)
        print()
        print(f"time to guest-ready line (TCG, {rounds} rounds, alternating)")
        print(f"  raw qemu-system-x86_64   p50 {r50 * 1000:7.0f} ms   p95 {r95 * 1000:7.0f} ms")
        print(f"  vireo vm create --start  p50 {v50 * 1000:7.0f} ms   p95 {v95 * 1000:7.0f} ms")
        deltas = [v - r for v, r in zip(vir, raw)]
        print(f"  overhead p50 {(v50 - r50) * 1000:+.0f} ms ({(v50 / r50 - 1) * 100:+.1f} %), ratio vireo/raw {v50 / r50:.3f}")
        print(f"  paired per-round difference: median {statistics.median(deltas) * 1000:+.0f} ms")
        ok = v50 - r50 <= 0.100 and v50 / r50 <= 1.10
        print(f"  target (<= +10 % and <= +100 ms at p50): {'met' if ok else 'NOT met'}")
    finally:
        daemon.kill()
        daemon.wait()
        subprocess.run(["pkill", "-9", "-f", state], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
