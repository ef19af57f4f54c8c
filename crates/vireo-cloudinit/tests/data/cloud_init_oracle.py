# Test oracle: reads NoCloud seed files with cloud-init's own code (Debian's cloud-init
# package, extracted, on PYTHONPATH) and prints what cloud-init makes of them as JSON:
#   parts        - leaf parts after cloud-init's user-data processing (type, payload)
#   cloud_config - the merged cloud-config, merged part by part as CloudConfigPartHandler does
#   meta_data    - meta-data as cloud-init's YAML loader reads it
#   interfaces/routes/dns - network-config parsed into cloud-init's network state
# Usage: python3 cloud_init_oracle.py USER-DATA META-DATA [NETWORK-CONFIG]
import json
import sys
import tempfile

from cloudinit import handlers, helpers, user_data, util
from cloudinit.handlers.cloud_config import CloudConfigPartHandler
from cloudinit.net import network_state

state_dir = tempfile.mkdtemp()
paths = helpers.Paths({"cloud_dir": state_dir, "run_dir": state_dir})
out = {}
with open(sys.argv[1], "rb") as f:
    message = user_data.UserDataProcessor(paths).process(f.read())
handler = CloudConfigPartHandler(paths)
handler.cloud_fn = None  # keep the merged config in memory
handler.handle_part(None, handlers.CONTENT_START, None, None, None, None)
parts = []
for part in message.walk():
    if part.get_content_maintype() == "multipart":
        continue
    ctype = part.get_content_type()
    payload = util.fully_decoded_payload(part)
    parts.append({"type": ctype, "payload": payload})
    if ctype == "text/cloud-config":
        handler.handle_part(
            None, ctype, part.get_filename() or "", payload, None, dict(part.items())
        )
out["parts"] = parts
out["cloud_config"] = handler.cloud_buf
with open(sys.argv[2], encoding="utf-8") as f:
    out["meta_data"] = util.load_yaml(f.read())
if len(sys.argv) > 3:
    with open(sys.argv[3], encoding="utf-8") as f:
        config = util.load_yaml(f.read())
    # As cloud-init's stages.Init does for every network-config source.
    if config and "network" in config:
        config = config["network"]
    state = network_state.parse_net_config_data(config, skip_broken=False)
    out["interfaces"] = list(state.iter_interfaces())
    out["routes"] = list(state.iter_routes())
    out["dns"] = state.dns_nameservers
print(json.dumps(out, default=str))
