import struct

import pytest

from provision_lint.elf_static import NotStatic, describe, main


def elf(e_type=2, machine=0x3E, interp=False, needed=0):
    """A minimal 64-bit ELF: header, program headers, then the segments' bytes."""
    phdrs, blobs = [], b""
    data_off = 64 + 56 * 2
    if interp:
        path = b"/lib64/ld-linux-x86-64.so.2\0"
        phdrs.append((3, data_off + len(blobs), len(path)))
        blobs += path
    dyn = b"".join(struct.pack("<qq", 1, 0) for _ in range(needed)) + struct.pack("<qq", 0, 0)
    phdrs.append((2, data_off + len(blobs), len(dyn)))
    blobs += dyn
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", e_type, machine, 1, 0, 64, 0, 0, 64, 56, len(phdrs), 64, 0, 0)
    table = b"".join(struct.pack("<IIQQQQQQ", t, 0, off, 0, 0, size, size, 8) for t, off, size in phdrs)
    table += bytes(56 * (2 - len(phdrs)))
    return header + table + blobs


def test_static_and_static_pie_are_accepted():
    assert describe(elf(e_type=2)) == "static"
    assert describe(elf(e_type=3)) == "static-pie"


@pytest.mark.parametrize("data", [elf(interp=True), elf(needed=1), elf(machine=0xB7), elf(e_type=1), b"#!/bin/sh\n" + bytes(64)])
def test_what_distroless_static_cannot_run_is_refused(data):
    with pytest.raises(NotStatic):
        describe(data)


def test_main_on_files(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(elf())
    bad.write_bytes(elf(interp=True))
    assert main([str(good)]) == 0
    assert main([str(bad)]) == 1
    assert "dynamically linked" in capsys.readouterr().out
