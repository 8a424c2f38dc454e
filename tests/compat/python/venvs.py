#!/usr/bin/env python3
"""Creates, or reuses, the virtual environments of the compat suite's Python peers.

usage: python3 tests/compat/python/venvs.py DIR

For each requirements-NAME.txt beside this file, DIR/NAME is a venv with exactly those pins
(device: azure-iot-device, service: azure-iot-hub, modbus: pymodbus). One venv per SDK because
their pins conflict (azure-iot-device needs paho-mqtt<2).

A venv is reused when its stamp matches the requirements file's hash and this Python's version;
otherwise it is rebuilt from scratch, and the stamp is written only after pip succeeded, so an
interrupted install is never mistaken for a good one. An exclusive lock on DIR/.lock serializes
concurrent callers (parallel test processes, .ci/run). pip needs PyPI the first time: without it
this fails with pip's error and a non-zero exit, never silently.

Prints one line per venv: NAME PATH-TO-ITS-PYTHON.
"""

import fcntl
import hashlib
import pathlib
import shutil
import subprocess
import sys
import venv

HERE = pathlib.Path(__file__).resolve().parent


def stamp_for(requirements):
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    return f"{digest} python {sys.version.split()[0]}\n"


def ensure(root, requirements):
    name = requirements.stem.removeprefix("requirements-")
    target = root / name
    python = target / "bin" / "python"
    stamp = target / ".compat-stamp"
    wanted = stamp_for(requirements)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return name, python
    print(f"venvs.py: building {target} from {requirements.name}", file=sys.stderr)
    shutil.rmtree(target, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--requirement",
            str(requirements),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
    )
    stamp.write_text(wanted)
    return name, python


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = pathlib.Path(sys.argv[1]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for requirements in sorted(HERE.glob("requirements-*.txt")):
            name, python = ensure(root, requirements)
            print(name, python)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as error:
        sys.exit(f"venvs.py: pip failed ({error}); PyPI must be reachable to build the venvs")
