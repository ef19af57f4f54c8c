"""First-boot benchmark driver (see bench/firstboot).

1. Debian image: unless BENCH_DEBIAN=cache, a daemon in the host namespace (managed networking
   off) builds it with the `debian` builder; the operation's log says whether the root tree
   came from the tree cache (warm) or from debootstrap (cold). The built qcow2 and its
   description then replace the cached image of the real tests
   ($VIREO_TEST_CACHE/debian/image/debian-<release>.{qcow2,json}), so one Debian image is kept.
2. A second daemon runs inside a throwaway network namespace (only `lo` up) with managed
   networking and an `isolated` network `lan` (bridge + dnsmasq DHCP); nothing is routed out.
   It imports the image, makes the templates `debian` (2 vCPUs, 1 GiB, user-data that creates
   a user with an SSH key and writes a file) and `tiny` (a seed with the host name only).
3. Per run: `vireo vm create NAME --template T --start` (the clock starts before the CLI runs),
   then polls every POLL seconds: `GET /v1/vms/NAME` until `guest_ready` (the agent answers),
   then `POST /v1/vms/NAME/exec` with the readiness check until it exits 0:
   - debian: `test -e /var/lib/cloud/instance/boot-finished` (cloud-init's final stage done);
     `cloud-init status` must then say `done`;
   - tiny: mount the seed CD-ROM and find the VM's name in its meta-data.
   The VM is killed and deleted after each run.

Only processes this script started are ended (by pid): the daemons, and the QEMUs and helpers
(dnsmasq) whose command lines name the daemons' state directories. The namespace is deleted.
"""

import base64
import glob
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
RELEASE = "bookworm"
POLL = 1.0
BOOT_LIMIT = 1200
LAN_SUBNET = "10.78.0.0/24"
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f bench@vireo"
)
USER_DATA = f"""#cloud-config
users:
  - name: bench
    shell: /bin/bash
    ssh_authorized_keys:
      - {SSH_KEY}
write_files:
  - path: /etc/vireo-bench.txt
    content: |
      first boot
"""


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("vireo", timeout=600)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


class Netns:
    """A network namespace with only `lo` up; deleted (with what is in it) by close()."""

    def __init__(self):
        self.name = f"vfb{os.getpid() % 100000}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class Daemon:
    def __init__(self, bin_dir, netns=None):
        self.bin_dir = bin_dir
        self.tmp = tempfile.mkdtemp(prefix="vf", dir="/tmp")
        self.state = os.path.join(self.tmp, "state")
        self.sock = os.path.join(self.tmp, "s.sock")
        cfg = os.path.join(self.tmp, "vireod.toml")
        net = (
            "[network]\nmanaged = true\ndefault_network = false\novs = false\n"
            if netns
            else "[network]\nmanaged = false\n"
        )
        with open(cfg, "w") as f:
            f.write(
                f'state_dir = "{self.state}"\nsocket = "{self.sock}"\naccel = "tcg"\n'
                f'image_cache_dir = "{CACHE}"\nnode = "bench"\n{net}'
            )
        self.log = open(os.path.join(self.tmp, "vireod.log"), "w")
        argv = [os.path.join(bin_dir, "vireod"), "--config", cfg]
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
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
        try:
            parsed = json.loads(out) if out else None
        except ValueError:
            parsed = out.decode(errors="replace")
        return r.status, parsed

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

    def exec(self, vm, argv, timeout_s=30):
        """(exit code or None when the agent could not run it, stdout)."""
        st, res = self.api("POST", f"/v1/vms/{vm}/exec", {"command": argv, "timeout_s": timeout_s})
        if st != 200:
            return None, ""
        return res["exit_code"], base64.b64decode(res["stdout_base64"]).decode(errors="replace")

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
        # QEMUs and dnsmasq name files under the state directory on their command lines.
        needle = self.state.encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                continue
        shutil.rmtree(self.tmp, ignore_errors=True)


def store_in_cache(built_dir, fingerprint_note):
    """Moves a daemon's build into the tests' cache (description last, path rewritten)."""
    cache = os.path.join(CACHE, "debian", "image")
    os.makedirs(cache, exist_ok=True)
    qcow2, desc = f"debian-{RELEASE}.qcow2", f"debian-{RELEASE}.json"
    try:
        os.unlink(os.path.join(cache, desc))
    except FileNotFoundError:
        pass
    shutil.move(os.path.join(built_dir, qcow2), os.path.join(cache, f".{qcow2}.tmp"))
    os.replace(os.path.join(cache, f".{qcow2}.tmp"), os.path.join(cache, qcow2))
    with open(os.path.join(built_dir, desc)) as f:
        d = json.load(f)
    d["path"] = os.path.join(cache, qcow2)
    with open(os.path.join(cache, f".{desc}.tmp"), "w") as f:
        json.dump(d, f, indent=2)
    os.replace(os.path.join(cache, f".{desc}.tmp"), os.path.join(cache, desc))
    print(f"  cached for the tests: {d['path']} ({fingerprint_note})", flush=True)
    return d["path"]


def debian_image(bin_dir):
    """(qcow2 path, build description, build seconds or None)."""
    cached = os.path.join(CACHE, "debian", "image", f"debian-{RELEASE}.qcow2")
    if os.environ.get("BENCH_DEBIAN", "build") == "cache":
        if not os.path.isfile(cached):
            raise RuntimeError(f"BENCH_DEBIAN=cache but {cached} does not exist")
        return cached, "not built (BENCH_DEBIAN=cache: cached image imported)", None
    debs = glob.glob(os.path.join(CACHE, "debian", "debs", "*.deb"))
    builder = Daemon(bin_dir)
    try:
        print("building the Debian image through vireod …", flush=True)
        t0 = time.perf_counter()
        op = builder.act("POST", "/v1/images/build", {"builder": "debian"})
        seconds = time.perf_counter() - t0
        warm = any("reusing the cached root tree" in line for line in op["log"])
        if warm:
            kind = "warm (archive unchanged: cached root tree reused)"
        else:
            kind = f"cold (debootstrap ran; {len(debs)} .debs were already downloaded)"
        built = glob.glob(os.path.join(builder.state, "images", "debian-*", f"debian-{RELEASE}.json"))
        if len(built) != 1:
            raise RuntimeError(f"cannot find the build's description: {built}")
        with open(built[0]) as f:
            fp = json.load(f)["fingerprint"]
        path = store_in_cache(os.path.dirname(built[0]), f"fingerprint {fp[:12]}…")
        return path, kind, seconds
    finally:
        builder.close()


def first_boot(d, source, name, check):
    """Seconds from `vm create NAME SOURCE… --start` to: started, agent answers, `check` ok."""
    t0 = time.perf_counter()
    d.cli("vm", "create", name, *source, "--start")
    t_started = time.perf_counter() - t0
    t_agent = None
    while True:
        now = time.perf_counter() - t0
        if now > BOOT_LIMIT:
            raise RuntimeError(f"{name} not done after {BOOT_LIMIT} s (agent: {t_agent})")
        if t_agent is None:
            st, vm = d.api("GET", f"/v1/vms/{name}")
            if st == 200 and vm["guest_ready"]:
                t_agent = time.perf_counter() - t0
        if t_agent is not None:
            code, _ = d.exec(name, check)
            if code == 0:
                return t_started, t_agent, time.perf_counter() - t0
        time.sleep(POLL)


def med(values):
    return f"{statistics.median(values):.1f} s" if values else "-"


def main():
    bin_dir = sys.argv[1]
    runs = int(os.environ.get("BENCH_RUNS", "1"))
    tiny_runs = int(os.environ.get("BENCH_TINY_RUNS", "3"))
    print(
        f"vireod {bin_dir}, TCG, {os.cpu_count()} host CPUs, load average at start "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    image, build_kind, build_s = debian_image(bin_dir)
    if build_s is not None:
        print(f"  Debian build: {build_s:.1f} s, {build_kind}", flush=True)

    ns = Netns()
    d = None
    try:
        d = Daemon(bin_dir, netns=ns.name)
        d.cli("network", "create", "lan", "--type", "isolated", "--subnet", LAN_SUBNET)
        t0 = time.perf_counter()
        d.cli("image", "import", image, "--name", "debian")
        import_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        d.act("POST", "/v1/images/build", {"builder": "tiny"})
        tiny_build_s = time.perf_counter() - t0
        d.act("POST", "/v1/vms", {
            "name": "debian", "image": "debian", "vcpus": 2, "memory_mib": 1024,
            "networks": ["lan"], "cloud_init": {"user_data": USER_DATA},
        })
        d.act("POST", "/v1/vms", {
            "name": "tiny", "image": "tiny", "networks": ["lan"], "cloud_init": {},
        })
        for t in ("debian", "tiny"):
            st, body = d.api("POST", f"/v1/vms/{t}/template")
            if st != 200:
                raise RuntimeError(f"template {t}: {st} {body}")

        ud_file = os.path.join(d.tmp, "user-data")
        with open(ud_file, "w") as f:
            f.write(USER_DATA)
        boot_finished = lambda name: ["test", "-e", "/var/lib/cloud/instance/boot-finished"]
        variants = [
            ("debian", ["--template", "debian"], runs, boot_finished),
            ("tiny", ["--template", "tiny"], tiny_runs, lambda name: [
                "sh", "-c",
                "mkdir -p /mnt/seed && mount -t iso9660 -o ro /dev/sr0 /mnt/seed && "
                f"grep -q '{name}' /mnt/seed/meta-data; r=$?; umount /mnt/seed; exit $r",
            ]),
        ]
        if os.environ.get("BENCH_DEBIAN_IMAGE"):
            # For comparison: the VM made from the image (one overlay) instead of a template
            # (clone overlay over the template's overlay over the image).
            variants.insert(1, ("debian-image", [
                "--image", "debian", "--network", "lan", "--vcpus", "2", "--memory", "1GiB",
                "--user-data", ud_file,
            ], runs, boot_finished))
        results = {}
        for label, source, n, check in variants:
            rows = []
            for i in range(n):
                name = f"{label}-fb{i + 1}"
                started, agent, done = first_boot(d, source, name, check(name))
                extra = ""
                if label.startswith("debian"):
                    code, out = d.exec(name, ["cloud-init", "status"])
                    if code != 0 or "done" not in out:
                        raise RuntimeError(f"cloud-init status in {name}: {code} {out!r}")
                    extra = f", cloud-init status: {out.strip().splitlines()[-1]}"
                print(
                    f"  {name}: started {started:.1f} s, agent {agent:.1f} s, "
                    f"ready {done:.1f} s{extra}",
                    flush=True,
                )
                rows.append((started, agent, done))
                d.delete_vm(name)
            results[label] = rows
    finally:
        if d is not None:
            d.close()
        ns.close()

    print()
    builds = {
        "debian": f"{build_s:.1f} s {build_kind.split(' ')[0]}" if build_s is not None else "not built",
        "debian-image": "(same image)",
        "tiny": f"{tiny_build_s:.1f} s",
    }
    print(f"{'VM from':<16} {'image build':<14} {'import':<8} {'runs':<5} "
          f"{'→started':<10} {'→agent':<10} {'→first boot done'}")
    for label, rows in results.items():
        source = "image debian" if label == "debian-image" else f"template {label}"
        imported = f"{import_s:.1f} s" if label == "debian" else "-"
        print(
            f"{source:<16} {builds[label]:<14} {imported:<8} {len(rows):<5} "
            f"{med([r[0] for r in rows]):<10} {med([r[1] for r in rows]):<10} "
            f"{med([r[2] for r in rows])}"
        )
    print("(medians; create = `vireo vm create NAME … --start` from before the CLI runs)")
    print("first boot done: debian = /var/lib/cloud/instance/boot-finished visible through the agent;")
    print("                 tiny   = agent answers and the cidata seed was read in the guest")


if __name__ == "__main__":
    main()
