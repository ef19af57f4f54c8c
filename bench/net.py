"""Network benchmark driver (see bench/net).

The guest-side tool is busybox: `httpd` serves a 32 MiB file from tmpfs, `wget` fetches it to
/dev/null 8 times in a row under `time` (10 ms resolution; 256 MiB take over a second). Directions:
VM->VM = guest a downloads from guest b on the same bridge; VM->outside = guest a downloads
from an httpd in the outside namespace through NAT (connection initiated by the VM, data
flowing back through conntrack). The hand-wired phase uses the same running QEMUs: the daemon
is stopped (VMs keep running), their taps move to a plain bridge with the gateway address and
a single masquerade rule; then the daemon is restarted and reconciles everything back."""

import base64
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "debug")
CACHE = os.environ.get("VIREO_TEST_CACHE", "/var/cache/vireo-test")
BLOB_MIB = 32
FETCHES = 8  # downloads per measurement

ID = os.getpid() % 100000
DNS, ONS, UPLINK, PEER = f"vbd{ID}", f"vbo{ID}", f"vbu{ID}", f"vbp{ID}"


def run(*args, check=True, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def nsrun(ns, *args, check=True, **kw):
    return run("ip", "netns", "exec", ns, *args, check=check, **kw)


def qga_exec(path, script, check):
    """Runs `sh -c script` through qemu-guest-agent's socket (guest-sync, guest-exec,
    guest-exec-status); returns an object shaped like subprocess.CompletedProcess."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(90)
    s.connect(path)
    f = s.makefile("rwb")

    def call(cmd, args=None):
        f.write(json.dumps({"execute": cmd, **({"arguments": args} if args else {})}).encode() + b"\n")
        f.flush()
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("guest agent hung up")
            msg = json.loads(line.strip(b"\xff") or b"{}")
            if "return" in msg or "error" in msg:
                return msg

    token = os.getpid()
    while call("guest-sync", {"id": token}).get("return") != token:
        pass
    pid = call("guest-exec", {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True})["return"]["pid"]
    while True:
        st = call("guest-exec-status", {"pid": pid})["return"]
        if st.get("exited"):
            break
        time.sleep(0.05)
    s.close()
    dec = lambda k: base64.b64decode(st.get(k, "")).decode(errors="replace")
    r = subprocess.CompletedProcess([script], st.get("exitcode", 1), dec("out-data"), dec("err-data"))
    if check and r.returncode != 0:
        raise RuntimeError(f"{script}: {r.stdout}{r.stderr}")
    return r


class Bench:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="vbn", dir="/tmp")
        self.sock = os.path.join(self.dir, "s.sock")
        self.daemon = None
        self.outside_httpd = None
        self.qga = {}

    def vireo(self, *args, check=True):
        env = dict(os.environ, VIREO_SOCKET=self.sock)
        env.pop("VIREO_REMOTE", None)
        return run(os.path.join(BIN, "vireo"), *args, check=check, env=env)

    def json(self, *args):
        return json.loads(self.vireo("--output", "json", *args).stdout)

    def namespaces(self):
        run("ip", "netns", "add", DNS)
        run("ip", "netns", "add", ONS)
        run("ip", "link", "add", UPLINK, "netns", DNS, "type", "veth", "peer", "name", PEER, "netns", ONS)
        run("ip", "-n", DNS, "addr", "add", "192.0.2.2/24", "dev", UPLINK)
        run("ip", "-n", ONS, "addr", "add", "192.0.2.1/24", "dev", PEER)
        for ns, dev in ((DNS, UPLINK), (ONS, PEER)):
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", DNS, "route", "add", "default", "via", "192.0.2.1")
        www = os.path.join(self.dir, "www")
        os.makedirs(www)
        with open(os.path.join(www, "blob"), "wb") as f:
            f.write(b"\0" * (BLOB_MIB << 20))
        self.outside_httpd = subprocess.Popen(
            ["ip", "netns", "exec", ONS, "busybox", "httpd", "-f", "-p", "192.0.2.1:8000", "-h", www])

    def start_daemon(self):
        cfg = os.path.join(self.dir, "vireod.toml")
        with open(cfg, "w") as f:
            f.write(f'state_dir = "{self.dir}/state"\nsocket = "{self.sock}"\naccel = "tcg"\n'
                    f'image_cache_dir = "{CACHE}"\nnode = "bench"\n'
                    f'[network]\nmanaged = true\nuplink = "{UPLINK}"\n')
        log = open(os.path.join(self.dir, "vireod.log"), "a")
        self.daemon = subprocess.Popen(["ip", "netns", "exec", DNS, os.path.join(BIN, "vireod"), "--config", cfg],
                                       stdout=log, stderr=log)
        for _ in range(600):
            if os.path.exists(self.sock) and self.vireo("host", "show", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("vireod did not come up")

    def kill_daemon(self):
        self.daemon.kill()
        self.daemon.wait()

    def exec(self, vm, script, check=True):
        if self.daemon is not None and self.daemon.poll() is None:
            return self.vireo("vm", "exec", vm, "--", "sh", "-c", script, check=check)
        # Daemon stopped (hand-wired phase): talk to the guest agent's socket directly.
        return qga_exec(self.qga[vm], script, check)

    def wait_exec(self, vm, script, limit=90):
        deadline = time.time() + limit
        while True:
            r = self.exec(vm, script, check=False)
            if r.returncode == 0:
                return r
            if time.time() > deadline:
                raise RuntimeError(f"{vm}: {script}: {r.stdout}{r.stderr}")
            time.sleep(1)

    def fetch(self, url):
        """Seconds guest a needs to download the blob from url FETCHES times in a row (one
        transfer takes a fraction of a second; `time` resolves 10 ms)."""
        loop = (f"i=0; while [ $i -lt {FETCHES} ]; do wget -q -O /dev/null {url} || exit 1; "
                "i=$((i + 1)); done")
        r = self.wait_exec("a", f"time sh -c '{loop}' 2>&1", limit=120)
        m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", r.stdout + r.stderr)
        if not m:
            raise RuntimeError(f"no timing in {r.stdout!r} {r.stderr!r}")
        return int(m.group(1)) * 60 + float(m.group(2))

    def round(self, ip_b):
        mbit = lambda s: FETCHES * BLOB_MIB * 8 * 1.048576 / max(s, 0.01)
        return mbit(self.fetch(f"http://{ip_b}:8000/blob")), mbit(self.fetch("http://192.0.2.1:8000/blob"))

    def hand_wire(self, taps):
        # Plain bridge, gateway address moved, one masquerade rule. (`nf_call_iptables 0` only
        # matters where the namespace's net.bridge.bridge-nf-call-iptables is 0; it is 1 by
        # default, so bridged traffic passes the inet hooks here as on Vireo's bridge.)
        run("ip", "-n", DNS, "link", "add", "brhand", "type", "bridge", "nf_call_iptables", "0")
        run("ip", "-n", DNS, "addr", "del", "10.0.0.1/24", "dev", "vb-default")
        run("ip", "-n", DNS, "addr", "add", "10.0.0.1/24", "dev", "brhand")
        run("ip", "-n", DNS, "link", "set", "brhand", "up")
        for t in taps:
            run("ip", "-n", DNS, "link", "set", t, "nomaster")
            run("ip", "-n", DNS, "link", "set", t, "master", "brhand")
        for fam in ("inet", "bridge"):
            nsrun(DNS, "nft", "delete", "table", fam, "vireo")
        nsrun(DNS, "nft", "-f", "-", input=(
            "table ip hand {\n  chain post {\n    type nat hook postrouting priority srcnat;\n"
            f"    ip saddr 10.0.0.0/24 oifname \"{UPLINK}\" masquerade\n  }}\n}}\n"))

    def unwire(self):
        nsrun(DNS, "nft", "delete", "table", "ip", "hand")
        run("ip", "-n", DNS, "link", "del", "brhand")

    def cleanup(self):
        if self.daemon and self.daemon.poll() is None:
            self.kill_daemon()
        if self.outside_httpd:
            self.outside_httpd.kill()
        # Everything the bench started names its temp dir (QEMU, dnsmasq, Open vSwitch).
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != os.getpid():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if self.dir.encode() in f.read():
                            os.kill(int(pid), 9)
                except OSError:
                    pass
        for ns in (DNS, ONS):
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    b = Bench()
    try:
        b.namespaces()
        b.start_daemon()
        if b.vireo("image", "show", "tiny", check=False).returncode != 0:
            b.vireo("image", "build", "tiny")
        for vm in ("a", "b"):
            b.vireo("vm", "create", vm, "--image", "tiny", "--network", "default", "--start", "--wait")
        nics = {vm: b.json("vm", "nic", "list", vm)[0] for vm in ("a", "b")}
        for vm in ("a", "b"):
            uuid = b.json("vm", "show", vm)["uuid"]
            b.qga[vm] = os.path.join(b.dir, "state", "vms", uuid, "qga.sock")
        ip_b = nics["b"]["ip"]
        taps = [nics[vm]["tap"] for vm in ("a", "b")]
        for vm in ("a", "b"):
            b.wait_exec(vm, f"ip -4 -o addr show dev eth0 | grep -q ' {nics[vm]['ip']}/'")
        b.wait_exec("b", f"mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/blob bs=1M count={BLOB_MIB} 2>/dev/null"
                         " && httpd -p 8000 -h /tmp/www")
        b.fetch(f"http://{ip_b}:8000/blob")  # warm-up (ARP, page cache)
        results = {"vireo": ([], []), "hand": ([], [])}

        def phase(name):
            for i in range(rounds):
                vv, vo = b.round(ip_b)
                results[name][0].append(vv)
                results[name][1].append(vo)
                print(f"{name:5} round {i + 1}: VM->VM {vv:7.1f} Mbit/s   VM->outside {vo:7.1f} Mbit/s", flush=True)

        phase("vireo")
        b.kill_daemon()
        b.hand_wire(taps)
        phase("hand")
        b.unwire()
        b.start_daemon()
        b.wait_exec("a", f"ping -c 1 -W 2 {ip_b} >/dev/null && ping -c 1 -W 2 192.0.2.1 >/dev/null", limit=60)
        phase("vireo")
        vv, vo = med(results["vireo"][0]), med(results["vireo"][1])
        hv, ho = med(results["hand"][0]), med(results["hand"][1])
        print()
        print(f"median VM->VM:      vireo {vv:7.1f} Mbit/s   hand-wired bridge {hv:7.1f} Mbit/s   ratio {vv / hv:.3f}")
        print(f"median VM->outside: vireo {vo:7.1f} Mbit/s   hand-wired NAT    {ho:7.1f} Mbit/s   ratio {vo / ho:.3f}")
        print(f"({rounds} rounds per phase, vireo phases before and after the hand-wired one; TCG guests, "
              f"{FETCHES} x {BLOB_MIB} MiB per measurement)")
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
