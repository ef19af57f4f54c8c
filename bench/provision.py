"""Provisioning benchmark driver (see bench/provision).

Starts a private vireod (TCG) on a temporary state directory and unix socket, builds the tiny
image (cached in VIREO_TEST_CACHE), then measures in one run:

(a) linked-clone creation from templates with 1 GiB and 100 GiB data disks: `POST
    /v1/vms/{template}/clone` until its operation has succeeded (and, for reference, the same
    through the `vireo vm clone` CLI), against `qemu-img create -f qcow2 -b BASE -F qcow2` on the
    template's own base file, alternating in the same loop; medians and ratios;
(b) `vireo vm create --template tiny-tmpl --count 20 --prefix w --start --wait` from the request
    until all 20 guests are ready, against 20 x the single-VM time (`vireo vm create NAME
    --template tiny-tmpl --start --wait`, median of a few, measured in the same run).

Only processes this script started are ended (by pid): the daemon and the QEMUs whose pidfiles
lie under its state directory.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CACHE = os.environ.get("VIREO_TEST_CACHE", "/var/cache/vireo-test")


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("vireo", timeout=600)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


class Daemon:
    def __init__(self, bin_dir):
        self.bin_dir = bin_dir
        self.tmp = tempfile.mkdtemp(prefix="vp", dir="/tmp")
        self.state = os.path.join(self.tmp, "state")
        self.sock = os.path.join(self.tmp, "s.sock")
        cfg = os.path.join(self.tmp, "vireod.toml")
        with open(cfg, "w") as f:
            f.write(
                f'state_dir = "{self.state}"\nsocket = "{self.sock}"\naccel = "tcg"\n'
                f'image_cache_dir = "{CACHE}"\nnode = "bench"\n'
            )
        self.log = open(os.path.join(self.tmp, "vireod.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "vireod"), "--config", cfg], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(self.sock):
                try:
                    if self.api("GET", "/v1/host")[0] == 200:
                        return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"vireod did not come up; see {self.log.name}")

    def api(self, method, path, body=None):
        c = UnixHTTP(self.sock)
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, (json.loads(out) if out else None)

    def wait_op(self, op):
        st, done = self.api("GET", f"/v1/operations/{op['id']}/wait?timeout=3600")
        if st != 200 or done["status"] != "succeeded":
            raise RuntimeError(f"operation {op['kind']} {op['target']} failed: {st} {done}")
        return done

    def act(self, method, path, body=None):
        """A request answered by an operation (202), waited for."""
        st, op = self.api(method, path, body)
        if st != 202:
            raise RuntimeError(f"{method} {path}: {st} {op}")
        return self.wait_op(op)

    def cli(self, *args):
        env = dict(os.environ, VIREO_SOCKET=self.sock)
        env.pop("VIREO_REMOTE", None)
        env.pop("VIREO_TOKEN", None)
        subprocess.run(
            [os.path.join(self.bin_dir, "vireo"), *args],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def delete_vm(self, name):
        st, vm = self.api("GET", f"/v1/vms/{name}")
        if st != 200:
            return
        if vm["state"] in ("running", "paused", "starting", "stopping"):
            self.act("POST", f"/v1/vms/{name}/kill")
        self.act("DELETE", f"/v1/vms/{name}")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        vms = os.path.join(self.state, "vms")
        for d in os.listdir(vms) if os.path.isdir(vms) else []:
            try:
                with open(os.path.join(vms, d, "qemu.pid")) as f:
                    pid = int(f.read().strip())
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    mine = self.state.encode() in f.read()
            except (OSError, ValueError):
                continue
            if mine:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)


def ms(s):
    return f"{s * 1000:8.1f} ms"


def volume_path(d, vm, disk="data"):
    """Host file of VM `vm`'s volume for disk `disk`."""
    st, pools = d.api("GET", "/v1/storage-pools")
    for pool in pools:
        st, vols = d.api("GET", f"/v1/storage-pools/{pool['name']}/volumes")
        for v in vols:
            a = v.get("attached_to") or {}
            if a.get("vm") == vm and a.get("disk") == disk:
                return os.path.join(pool["path"], f"{v['uuid']}.qcow2")
    raise RuntimeError(f"no volume for disk {disk} of {vm}")


def make_template(d, name, disk):
    d.act("POST", "/v1/vms", {"name": name, "image": "tiny", "disk_mib": disk >> 20})
    st, vm = d.api("POST", f"/v1/vms/{name}/template")
    if st != 200:
        raise RuntimeError(f"template {name}: {st} {vm}")


def bench_linked(d, rounds, work):
    print(f"(a) linked clone creation, {rounds} rounds, every variant in every round", flush=True)
    sizes = [("1GiB", 1 << 30), ("100GiB", 100 << 30)]
    bases = {}
    for label, size in sizes:
        tmpl = f"t{label.lower()}"
        make_template(d, tmpl, size)
        bases[label] = (tmpl, volume_path(d, tmpl))
    times = {(label, kind): [] for label, _ in sizes for kind in ("api", "cli", "qemu-img")}

    def one(label, kind, i):
        tmpl, base = bases[label]
        name = f"c{label.lower()}x{i + 1}"
        if kind == "qemu-img":
            out = os.path.join(work, f"{name}.qcow2")
            argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", out]
            t0 = time.perf_counter()
            subprocess.run(argv, check=True)
            t = time.perf_counter() - t0
            os.unlink(out)
            return t
        t0 = time.perf_counter()
        if kind == "api":
            d.act("POST", f"/v1/vms/{tmpl}/clone", {"name": name})
        else:
            d.cli("vm", "clone", tmpl, name)
        t = time.perf_counter() - t0
        d.delete_vm(name)
        return t

    variants = list(times)
    # Round -1 warms up (page cache, first-use paths) and is not counted; the order rotates
    # every round so no variant always runs first or right after a delete.
    for i in range(-1, rounds):
        k = i % len(variants)
        for label, kind in variants[k:] + variants[:k]:
            t = one(label, kind, i)
            if i >= 0:
                times[(label, kind)].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for label, _ in sizes:
        a, c, q = med[(label, "api")], med[(label, "cli")], med[(label, "qemu-img")]
        print(
            f"  template {label:>6}: vireo API+op {ms(a)}   vireo CLI {ms(c)}   "
            f"qemu-img create -b {ms(q)}   ratio API/qemu-img {a / q:.2f}  CLI/qemu-img {c / q:.2f}",
            flush=True,
        )
    for kind in ("api", "cli", "qemu-img"):
        print(f"  size independence {kind:>8}: median 100 GiB / 1 GiB = "
              f"{med[('100GiB', kind)] / med[('1GiB', kind)]:.2f}")
    return med


def bench_count(d, count, singles):
    print(f"(b) {count} guests from a template, vs {count} x one guest", flush=True)
    make_template(d, "tiny-tmpl", 128 << 20)
    one = []
    for i in range(singles + 1):
        name = f"single{i}"
        t0 = time.perf_counter()
        d.cli("vm", "create", name, "--template", "tiny-tmpl", "--start", "--wait")
        t = time.perf_counter() - t0
        d.delete_vm(name)
        if i > 0:  # the first boot warms the page cache
            one.append(t)
            print(f"  single VM {i}/{singles}: {t:6.2f} s", flush=True)
    t1 = statistics.median(one)
    t0 = time.perf_counter()
    d.cli(
        "vm", "create", "--template", "tiny-tmpl", "--count", str(count), "--prefix", "w",
        "--start", "--wait", "--timeout", "30m",
    )
    tn = time.perf_counter() - t0
    st, vms = d.api("GET", "/v1/vms")
    ready = [v for v in vms if v["name"].startswith("w") and v["guest_ready"]]
    if len(ready) != count:
        raise RuntimeError(f"only {len(ready)} of {count} guests are ready")
    serial = count * t1
    print(f"  one VM (median of {singles}): {t1:6.2f} s   {count} x one: {serial:6.2f} s")
    print(f"  --count {count} until all ready: {tn:6.2f} s   ratio {tn / serial:.2f} (target <= 0.6)")
    for v in ready:
        d.delete_vm(v["name"])
    return t1, tn


def main():
    bin_dir = sys.argv[1]
    rounds = int(os.environ.get("BENCH_ROUNDS", "10"))
    count = int(os.environ.get("BENCH_COUNT", "20"))
    singles = int(os.environ.get("BENCH_SINGLES", "3"))
    parts = os.environ.get("BENCH_PARTS", "ab")
    d = Daemon(bin_dir)
    work = tempfile.mkdtemp(prefix="vpq", dir="/var/tmp")
    try:
        d.act("POST", "/v1/images/build", {"builder": "tiny"})
        print(f"vireod {bin_dir}, TCG, {os.cpu_count()} CPUs", flush=True)
        if "a" in parts:
            bench_linked(d, rounds, work)
        if "b" in parts:
            bench_count(d, count, singles)
    finally:
        d.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
