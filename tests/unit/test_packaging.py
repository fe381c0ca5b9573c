"""What an install brings and what an import costs (issue 12.8)."""

import configparser
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLOTTING = ("bokeh", "matplotlib", "numpy", "pandas", "jinja2", "contourpy", "pillow")


def _requirements(section, key):
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    return [line.split(">")[0].split("=")[0].split("<")[0].strip().lower()
            for line in config[section][key].splitlines() if line.strip()]


def test_the_runtime_install_brings_no_plotting_library():
    runtime = _requirements("options", "install_requires")
    assert set(runtime) == {"pyzmq", "msgpack", "cloudpickle", "psutil", "tqdm"}
    assert "bokeh" in _requirements("options.extras_require", "report")


def _modules_after(statement):
    probe = (f"import sys; {statement}; "
             f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    return set(out)


def test_importing_the_protocol_loads_nothing_heavy():
    loaded = _modules_after("import hyperloom.protocol")
    assert not loaded & {"bokeh", "numpy", "psutil", "zmq", "cloudpickle", "tqdm"}, loaded


def test_hyperloom_local_cluster_is_still_importable_from_the_package():
    loaded = _modules_after("from hyperloom import LocalCluster; import hyperloom; "
                            "assert hyperloom.LocalCluster is LocalCluster")
    assert "psutil" in loaded  # it did load the cluster module when asked


def test_loom_report_without_bokeh_says_what_to_install(tmp_path):
    # sys.modules[name] = None makes every import of it fail, as if it were not installed.
    script = ("import sys; sys.modules['bokeh'] = None; "
              "from hyperloom.report import main; "
              f"sys.exit(main([{str(tmp_path)!r}, '-o', {str(tmp_path / 'r.html')!r}]))")
    (tmp_path / "broker.ltrace").write_bytes(b"")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert "pip install 'hyperloom[report]'" in result.stderr, result.stderr
    assert not (tmp_path / "r.html").exists()
