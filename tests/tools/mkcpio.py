#!/usr/bin/env python3
"""Write a Linux initramfs archive (cpio "newc", optionally gzip) without root rights.

Every entry is owned by root (uid/gid 0) with mtime 0, so the output is reproducible and no
root is needed for ownership or device nodes.

    mkcpio.py OUT[.gz] [--root DIR] [--file SRC:DEST]... [--node DEST:c:MAJOR:MINOR[:MODE]]...

--root DIR   add DIR's tree (directories, files, symlinks) at "/"
--file       add one file (or symlink) SRC as DEST (absolute path in the archive); its
             parent directories are added first when not already present
--node       add a character ("c") or block ("b") device node
OUT ending in .gz is gzip-compressed. Archives written this way can be concatenated
(cat base.cpio.gz extra.cpio.gz > all.cpio.gz): the kernel unpacks them in order, later
files replacing earlier ones.
"""
import argparse
import gzip
import os
import stat
import sys


class Writer:
    def __init__(self):
        self.out = bytearray()
        self.ino = 1000
        self.seen = set()

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name = name.strip("/") or "."
        self.ino += 1
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(namez), 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out += hdr + namez
        self.out += b"\0" * (-len(self.out) % 4)
        self.out += data
        self.out += b"\0" * (-len(self.out) % 4)
        self.seen.add(name)

    def dirs_for(self, dest):
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.seen:
                self._entry(d, stat.S_IFDIR | 0o755)

    def add_path(self, src, dest):
        """Add one filesystem object (no recursion)."""
        st = os.lstat(src)
        if dest.strip("/") not in ("", "."):
            self.dirs_for(dest)
        if stat.S_ISLNK(st.st_mode):
            self._entry(dest, stat.S_IFLNK | 0o777, os.readlink(src).encode())
        elif stat.S_ISDIR(st.st_mode):
            if dest.strip("/") not in self.seen:
                self._entry(dest, stat.S_IFDIR | stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            with open(src, "rb") as f:
                self._entry(dest, stat.S_IFREG | stat.S_IMODE(st.st_mode), f.read())
        else:
            sys.exit(f"mkcpio: unsupported file type: {src}")

    def add_tree(self, root):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            dest_dir = "" if rel == "." else rel
            if dest_dir:
                self.add_path(dirpath, dest_dir)
            # symlinks to directories are listed in dirnames: add them as links, do not descend
            for d in list(dirnames):
                if os.path.islink(os.path.join(dirpath, d)):
                    self.add_path(os.path.join(dirpath, d), os.path.join(dest_dir, d))
                    dirnames.remove(d)
            for fn in sorted(filenames):
                self.add_path(os.path.join(dirpath, fn), os.path.join(dest_dir, fn))

    def add_node(self, spec):
        parts = spec.split(":")
        if len(parts) not in (4, 5) or parts[1] not in ("c", "b"):
            sys.exit(f"mkcpio: bad --node {spec!r} (want DEST:c|b:MAJOR:MINOR[:MODE])")
        mode = int(parts[4], 8) if len(parts) == 5 else 0o600
        kind = stat.S_IFCHR if parts[1] == "c" else stat.S_IFBLK
        self.dirs_for(parts[0])
        self._entry(parts[0], kind | mode, rdev=(int(parts[2]), int(parts[3])))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        self.seen.discard("TRAILER!!!")
        self.out += b"\0" * (-len(self.out) % 512)
        return bytes(self.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--root", action="append", default=[])
    ap.add_argument("--file", action="append", default=[], metavar="SRC:DEST")
    ap.add_argument("--node", action="append", default=[], metavar="DEST:c:MAJ:MIN[:MODE]")
    a = ap.parse_args()
    w = Writer()
    for r in a.root:
        w.add_tree(r)
    for spec in a.file:
        src, sep, dest = spec.rpartition(":")
        if not sep or not dest.startswith("/"):
            sys.exit(f"mkcpio: bad --file {spec!r} (want SRC:/absolute/dest)")
        if not os.path.lexists(src):
            sys.exit(f"mkcpio: no such file: {src}")
        w.add_path(src, dest)
    for spec in a.node:
        w.add_node(spec)
    data = w.finish()
    if a.out.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
