#!/usr/bin/env python3
"""The file work of scripts/e2e-images: stage host files into an image root,
tar a root as a reproducible layer, write an OCI image layout, read a
package's version from a root's dpkg status. Python's tarfile and hashlib,
so that no image tool is needed. Tested by scripts/test_oci_tool.py.

Usage: see `pytool` in scripts/e2e-images.
"""
import argparse, hashlib, io, json, os, shutil, stat, sys, tarfile, time

def fail(msg):
    sys.stderr.write("e2e-images: error: %s\n" % msg)
    sys.exit(1)

def copy_path(root, path, depth=0):
    if depth > 40:
        fail("too many levels of symbolic links: " + path)
    parts = os.path.normpath(path).strip("/").split("/")
    cur = ""
    for i, comp in enumerate(parts):
        cur += "/" + comp
        dst = root + cur
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            fail("%s does not exist (copying %s)" % (cur, path))
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(cur)
            if os.path.islink(dst):
                if os.readlink(dst) != target:
                    fail("%s: conflicting symlinks" % dst)
            elif os.path.lexists(dst):
                fail("%s exists and is not a symlink" % dst)
            else:
                os.symlink(target, dst)
            rest = parts[i + 1:]
            nxt = os.path.normpath(os.path.join(os.path.dirname(cur), target, *rest))
            return copy_path(root, nxt, depth + 1)
        if stat.S_ISDIR(st.st_mode):
            if not os.path.isdir(dst):
                os.mkdir(dst)
                os.chmod(dst, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode) and i == len(parts) - 1:
            shutil.copyfile(cur, dst)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        else:
            fail("%s: not a regular file, directory or symlink" % cur)

def cmd_stage(a):
    for p in a.paths:
        if not p.startswith("/"):
            fail("not an absolute path: " + p)
        copy_path(a.root.rstrip("/"), p)

def cmd_layer(a):
    owners = {}
    for o in a.owner:
        rel, ids = o.split("=", 1)
        uid, gid = ids.split(":")
        owners[rel.strip("/")] = (int(uid), int(gid))
    root = a.root.rstrip("/")
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        def add(full, rel):
            ti = t.gettarinfo(full, rel)
            if ti.isdir() and a.skip_dirs:
                return
            ti.uid, ti.gid = owners.get(rel, (0, 0))
            ti.uname = ti.gname = "root" if ti.uid == 0 else ""
            ti.mtime = a.mtime
            if ti.isreg():
                with open(full, "rb") as f:
                    t.addfile(ti, f)
            else:
                t.addfile(ti)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            names = sorted(dirnames + filenames)
            for n in names:
                full = os.path.join(dirpath, n)
                add(full, os.path.relpath(full, root))
    os.replace(tmp, a.out)

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest(), os.path.getsize(path)

def cmd_oci(a):
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.created))
    layers, diff_ids, history, files = [], [], [], {}
    for path, comment in a.layer:
        digest, size = sha256_file(path)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                       "digest": digest, "size": size})
        diff_ids.append(digest)
        history.append({"created": created, "created_by": "scripts/e2e-images",
                        "comment": comment})
        files[digest] = path
    config = {"created": created, "architecture": "amd64", "os": "linux",
              "config": json.loads(a.config),
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": history}
    blobs = {}
    def blob(obj):
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest, len(data)
    cdigest, csize = blob(config)
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cdigest, "size": csize},
                "layers": layers}
    mdigest, msize = blob(manifest)
    index = {"schemaVersion": 2,
             "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": mdigest, "size": msize,
                            "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"io.containerd.image.name": a.ref,
                                            "org.opencontainers.image.ref.name": a.ref_name}}]}
    def info(name, size=0, mode=0o644, kind=tarfile.REGTYPE):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.type, ti.mtime = size, mode, kind, a.created
        ti.uname = ti.gname = "root"
        return ti
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        def add_bytes(name, data):
            t.addfile(info(name, len(data)), io.BytesIO(data))
        add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_bytes("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
        t.addfile(info("blobs", mode=0o755, kind=tarfile.DIRTYPE))
        t.addfile(info("blobs/sha256", mode=0o755, kind=tarfile.DIRTYPE))
        for digest, data in sorted(blobs.items()):
            add_bytes("blobs/sha256/" + digest[7:], data)
        for digest, path in sorted(files.items()):
            with open(path, "rb") as f:
                t.addfile(info("blobs/sha256/" + digest[7:], os.path.getsize(path)), f)
    os.replace(tmp, a.out)
    print(mdigest)

def cmd_dpkg_version(a):
    with tarfile.open(a.tar) as t:
        for name in ("./var/lib/dpkg/status", "var/lib/dpkg/status"):
            try:
                f = t.extractfile(name)
            except KeyError:
                continue
            for para in f.read().decode("utf-8", "replace").split("\n\n"):
                fields = dict(l.split(": ", 1) for l in para.splitlines()
                              if ": " in l and not l.startswith(" "))
                if fields.get("Package") == a.pkg and "installed" in fields.get("Status", ""):
                    print(fields.get("Version", ""))
                    return
            return
    fail("%s has no var/lib/dpkg/status" % a.tar)

def main(argv=None):
    p = argparse.ArgumentParser(prog="e2e-images pytool")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage"); s.add_argument("root"); s.add_argument("paths", nargs="+")
    s.set_defaults(fn=cmd_stage)
    s = sub.add_parser("layer"); s.add_argument("out"); s.add_argument("root")
    s.add_argument("--mtime", type=int, default=0)
    s.add_argument("--owner", action="append", default=[])
    s.add_argument("--skip-dirs", action="store_true")
    s.set_defaults(fn=cmd_layer)
    s = sub.add_parser("oci"); s.add_argument("out")
    s.add_argument("--ref", required=True); s.add_argument("--ref-name", required=True)
    s.add_argument("--config", required=True); s.add_argument("--created", type=int, default=0)
    s.add_argument("--layer", nargs=2, action="append", required=True)
    s.set_defaults(fn=cmd_oci)
    s = sub.add_parser("dpkg-version"); s.add_argument("tar"); s.add_argument("pkg")
    s.set_defaults(fn=cmd_dpkg_version)
    a = p.parse_args(argv)
    a.fn(a)

if __name__ == "__main__":
    main()
