"""What the Python benchmarks share about a Strata under test: its config file and its
metrics. Import from a script in scripts/ (`sys.path` holds the script's directory)."""

import urllib.request


def config_text(data_dir, dicom_port, http_port, extra=""):
    """A `strata.toml`: `data_dir`, DICOM and HTTP on loopback at the given ports, no
    free-space floor, then `extra` (more sections)."""
    return f"""[archive]
data_dir = "{data_dir}"
min_free_space_mb = 0
[dicom]
port = {dicom_port}
bind = "127.0.0.1"
[http]
port = {http_port}
bind = "127.0.0.1"
{extra}"""


def metric(http_port, name):
    """The sum over every label set of the Prometheus sample `name` at /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name or key.startswith(name + "{"):
            total += float(value)
    return total
