#!/usr/bin/env python3
"""Line profile of a loaded BPF program: where its samples fall, by Rust source line.

perf samples the CPUs for a while; each sample inside the program's JIT-ed code is
mapped through the program's jited_line_info and its BTF line info (both read with
BPF_OBJ_GET_INFO_BY_FD) to the source line of the sampled instruction. bpftool and
perf on these machines are built without libbfd, so neither can annotate BPF code.

    bench/jit-profile.py ackwatch_xdp 3            # all CPUs, 3 s, while traffic runs
    bench/jit-profile.py ackwatch_xdp 3 --cpu 1    # one CPU (a pinned hot loop:
        # taskset -c 1 bpftool prog run id N data_in frame.bin repeat 20000000)

A sample lands on the oldest instruction not yet retired: a load that misses shows
as the instruction that waits for it. Root only; needs perf.
"""
import argparse
import bisect
import collections
import ctypes
import json
import struct
import subprocess
import sys
import tempfile

SYS_BPF = 321  # x86_64
PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, BTF_GET_FD_BY_ID = 13, 15, 19
libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf command {cmd}")
    return fd


def info(fd, size, fields=()):
    """struct bpf_prog_info / bpf_btf_info of `fd`, with (offset, value, format) set."""
    out = ctypes.create_string_buffer(size)
    for off, val, fmt in fields:
        struct.pack_into(fmt, out, off, val)
    bpf(OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, size, ctypes.addressof(out)))
    return out


def lines_of(prog_id):
    """[(address, file, line, source text)] of the program's JIT-ed code, sorted."""
    fd = bpf(PROG_GET_FD_BY_ID, struct.pack("<IIII", prog_id, 0, 0, 0))
    first = info(fd, 232)
    nks, = struct.unpack_from("<I", first, 104)
    btf_id, = struct.unpack_from("<I", first, 128)
    nli, = struct.unpack_from("<I", first, 148)
    njli, = struct.unpack_from("<I", first, 168)
    rec, = struct.unpack_from("<I", first, 172)
    lens = ctypes.create_string_buffer(4 * nks)
    ksyms = ctypes.create_string_buffer(8 * nks)
    li = ctypes.create_string_buffer(nli * rec)
    jli = ctypes.create_string_buffer(8 * njli)
    info(fd, 232, [
        (104, nks, "<I"), (108, nks, "<I"),
        (112, ctypes.addressof(ksyms), "<Q"), (120, ctypes.addressof(lens), "<Q"),
        (148, nli, "<I"), (152, ctypes.addressof(li), "<Q"),
        (160, ctypes.addressof(jli), "<Q"), (168, njli, "<I"),
        (172, rec, "<I"), (176, 8, "<I"),
    ])
    starts = struct.unpack(f"<{nks}Q", ksyms.raw)
    sizes = struct.unpack(f"<{nks}I", lens.raw)
    btf_fd = bpf(BTF_GET_FD_BY_ID, struct.pack("<IIII", btf_id, 0, 0, 0))
    size, = struct.unpack_from("<I", info(btf_fd, 32), 8)
    blob = ctypes.create_string_buffer(size)
    info(btf_fd, 32, [(0, ctypes.addressof(blob), "<Q"), (8, size, "<I")])
    hdr_len, = struct.unpack_from("<I", blob.raw, 4)
    str_off, str_len = struct.unpack_from("<II", blob.raw, 16)
    strings = blob.raw[hdr_len + str_off:hdr_len + str_off + str_len]

    def string(off):
        return strings[off:strings.index(b"\0", off)].decode(errors="replace")

    addrs = struct.unpack(f"<{njli}Q", jli.raw)
    out = []
    for i in range(nli):
        _, file_off, line_off, col = struct.unpack_from("<IIII", li, i * rec)
        out.append((addrs[i], string(file_off).split("/")[-1], col >> 10,
                    string(line_off).strip()))
    out.sort()
    return out, min(starts), max(s + n for s, n in zip(starts, sizes))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("program", help="name of a loaded program, e.g. ackwatch_xdp")
    ap.add_argument("seconds", type=float)
    ap.add_argument("--cpu", help="sample these CPUs only (perf -C)")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    shown = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], check=True,
                                      capture_output=True, text=True).stdout)
    ids = [p["id"] for p in shown if p.get("name") == a.program]
    if not ids:
        sys.exit(f"no loaded program named {a.program}")
    lines, lo, hi = lines_of(ids[-1])
    addrs = [l[0] for l in lines]
    with tempfile.NamedTemporaryFile(suffix=".perf") as data:
        where = ["-C", a.cpu] if a.cpu else ["-a"]
        subprocess.run(["perf", "record", *where, "-e", "cpu-clock", "-F", "20000",
                        "-o", data.name, "--", "sleep", str(a.seconds)],
                       check=True, capture_output=True)
        ips = subprocess.run(["perf", "script", "-i", data.name, "-F", "ip"], check=True,
                             capture_output=True, text=True).stdout.split()
    hits = collections.Counter()
    total = 0
    for ip in ips:
        ip = int(ip, 16)
        total += 1
        if lo <= ip < hi:
            _, f, n, text = lines[bisect.bisect_right(addrs, ip) - 1]
            hits[(f, n, text)] += 1
    inside = sum(hits.values())
    print(f"{total} samples, {inside} in {a.program} (id {ids[-1]})")
    for (f, n, text), c in hits.most_common(a.top):
        print(f"{100 * c / max(inside, 1):5.1f}%  {f}:{n}  {text[:90]}")


if __name__ == "__main__":
    main()
