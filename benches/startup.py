"""What installing awaitlet costs every Python process of an environment at start-up.

    python benches/startup.py [--runs 300]

Run it with the interpreter of an environment where awaitlet is installed. What awaitlet adds
to every start is its greenlet hook (a .pth file and the module it imports), so the script
makes two bare virtual environments of the same interpreter, one with copies of those two
files, starts `python -c pass` in each, alternately, and prints the median and mean wall and
CPU time per start, and how many modules each start imported.
"""

import argparse
import ast
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv

HOOK_FILES = ("awaitlet-greenlet-shim.pth", "_awaitlet_greenlet_shim.py")


def start_once(python: str) -> tuple[float, float]:
    """Wall and CPU seconds of one `python -c pass`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def modules_at_start(python: str) -> int:
    output = subprocess.run(
        [python, "-c", "import sys; print(sorted(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return len(ast.literal_eval(output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    options = parser.parse_args()
    installed = sysconfig.get_paths()["purelib"]
    with tempfile.TemporaryDirectory() as directory:
        pythons = {}
        for name in ("with the hook", "without"):
            environment = os.path.join(directory, name.replace(" ", "-"))
            venv.create(environment, with_pip=False)
            pythons[name] = os.path.join(environment, "bin", "python")
        site_packages = subprocess.run(
            [
                pythons["with the hook"],
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for file in HOOK_FILES:
            shutil.copy(os.path.join(installed, file), site_packages)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pythons}
        for python in pythons.values():  # warm the caches
            for _ in range(5):
                start_once(python)
        for _ in range(options.runs):
            for name, python in pythons.items():
                samples[name].append(start_once(python))
        print(f"{sys.implementation.name} {sys.version.split()[0]}, {options.runs} starts each")
        print("| environment | modules | wall median | wall mean | CPU median | CPU mean |")
        print("|---|---|---|---|---|---|")
        for name, python in pythons.items():
            walls = [wall * 1e3 for wall, _ in samples[name]]
            cpus = [cpu * 1e3 for _, cpu in samples[name]]
            print(
                f"| {name} | {modules_at_start(python)} "
                f"| {statistics.median(walls):.2f} ms | {statistics.mean(walls):.2f} ms "
                f"| {statistics.median(cpus):.2f} ms | {statistics.mean(cpus):.2f} ms |"
            )


if __name__ == "__main__":
    main()
