"""Whether a file can run on distroless/static: an x86-64 ELF executable with no program
interpreter (PT_INTERP) and no shared library needed (DT_NEEDED). A static-pie has a
PT_DYNAMIC segment for its own relocations, but needs no library.

    python -m provision_lint.elf_static FILE    # scripts/check-image
"""

from __future__ import annotations

import struct
import sys

PT_DYNAMIC, PT_INTERP, DT_NEEDED = 2, 3, 1
EM_X86_64 = 0x3E


class NotStatic(ValueError):
    pass


def describe(data: bytes) -> str:
    """'static' or 'static-pie'; raises NotStatic saying why the file cannot run there."""
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] != 2 or data[5] != 1:
        raise NotStatic("not a 64-bit little-endian ELF file")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != EM_X86_64 or e_type not in (2, 3):
        raise NotStatic(f"not an x86-64 executable (e_machine {e_machine:#x}, e_type {e_type})")
    (e_phoff,) = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    interp, needed = None, 0
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_INTERP:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode(errors="replace")
        if p_type == PT_DYNAMIC:
            for off in range(p_offset, p_offset + p_filesz, 16):
                (tag,) = struct.unpack_from("<q", data, off)
                if tag == 0:
                    break
                needed += tag == DT_NEEDED
    if interp or needed:
        raise NotStatic(f"dynamically linked (interpreter {interp!r}, {needed} shared libraries needed): distroless/static has no libc")
    return "static-pie" if e_type == 3 else "static"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[0]
    with open(path, "rb") as f:
        data = f.read()
    try:
        kind = describe(data)
    except NotStatic as exc:
        print(f"check-image: FAIL {path} is {exc}")
        return 1
    print(f"check-image: ok   ELF x86-64 {kind} executable: no PT_INTERP, no DT_NEEDED")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
