"""Checks release wheels before they are tested or published.

    python .ci/check_wheel.py dist/*.whl

For each wheel: its extension module is stripped (ELF: no .symtab, no .debug_* sections);
on Linux, ``auditwheel show`` finds the wheel at least as compatible as the platform tag in
its name (manylinux_2_28 or musllinux_1_2, for example), and the wheel is consistent with
that tag. Prints one line per wheel: sizes and what auditwheel found. Needs auditwheel
(which brings pyelftools) for Linux wheels; exits non-zero if any wheel fails a check.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

LINUX_TAG = re.compile(r"(manylinux|musllinux)_(\d+)_(\d+)_([a-z0-9_]+)")
CONSISTENT = re.compile(r'is consistent with the following platform tag: "([^"]+)"')


def extension_of(wheel: Path) -> tuple[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        names = [
            name
            for name in archive.namelist()
            if name.startswith("awaitlet/_awaitlet.") and name.endswith((".so", ".pyd"))
        ]
        if len(names) != 1:
            raise SystemExit(f"{wheel.name}: expected one extension module, found {names}")
        return names[0], archive.read(names[0])


def unstripped_sections(data: bytes) -> list[str]:
    """The symbol table and debug sections left in an ELF file (nothing for other formats)."""
    if data[:4] != b"\x7fELF":
        return []
    from elftools.elf.elffile import ELFFile

    sections = (section.name for section in ELFFile(io.BytesIO(data)).iter_sections())
    return sorted(name for name in sections if name == ".symtab" or name.startswith(".debug"))


def auditwheel_tag(wheel: Path) -> str:
    """The most compatible platform tag that auditwheel finds the wheel consistent with."""
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)],
        capture_output=True,
        text=True,
    )
    text = " ".join(shown.stdout.split())
    found = CONSISTENT.search(text)
    if shown.returncode != 0 or found is None:
        raise SystemExit(f"{wheel.name}: auditwheel show failed:\n{shown.stdout}{shown.stderr}")
    return found.group(1)


def check(wheel: Path) -> list[str]:
    problems = []
    name, data = extension_of(wheel)
    leftover = unstripped_sections(data)
    if leftover:
        problems.append(f"{name} is not stripped ({', '.join(leftover)})")
    platform = wheel.name.removesuffix(".whl").rsplit("-", 1)[-1]
    declared = LINUX_TAG.findall(platform)
    audit = ""
    if declared:
        found_tag = auditwheel_tag(wheel)
        audit = f", auditwheel: {found_tag}"
        found = LINUX_TAG.fullmatch(found_tag)
        for family, major, minor, arch in declared:
            ok = (
                found is not None
                and found.group(1) == family
                and found.group(4) == arch
                and (int(found.group(2)), int(found.group(3))) <= (int(major), int(minor))
            )
            if not ok:
                problems.append(
                    f"auditwheel finds it {found_tag}, not {family}_{major}_{minor}_{arch}"
                )
    print(
        f"{wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB, "
        f"extension {len(data) / 1024:.0f} KiB{audit}"
    )
    return [f"{wheel.name}: {problem}" for problem in problems]


def main(paths: list[str]) -> int:
    wheels = [Path(path) for path in paths if path.endswith(".whl")]
    if not wheels:
        print("check_wheel.py: no wheels given", file=sys.stderr)
        return 2
    problems = [problem for wheel in wheels for problem in check(wheel)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
