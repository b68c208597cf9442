"""Tests of scripts/oci_tool.py (run by scripts/test:
python3 -m unittest discover -s scripts -p 'test_*.py')."""

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import unittest

import oci_tool


def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        oci_tool.main(list(argv))
    return out.getvalue()


class OciToolTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.tmp = self.dir.name

    def tearDown(self):
        self.dir.cleanup()

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def make_root(self):
        root = self.path("root")
        os.makedirs(os.path.join(root, "usr", "bin"))
        with open(os.path.join(root, "usr", "bin", "tool"), "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(os.path.join(root, "usr", "bin", "tool"), 0o755)
        os.makedirs(os.path.join(root, "home", "app"))
        os.symlink("usr/bin", os.path.join(root, "bin"))
        return root

    def test_stage_copies_files_and_recreates_symlinks_on_the_way(self):
        host = self.path("host")
        os.makedirs(os.path.join(host, "usr", "lib"))
        with open(os.path.join(host, "usr", "lib", "libx.so"), "w") as f:
            f.write("x")
        os.symlink("usr/lib", os.path.join(host, "lib"))
        root = self.path("stage")
        os.makedirs(root)
        run("stage", root, os.path.join(host, "lib", "libx.so"))
        staged_link = root + os.path.join(host, "lib")
        self.assertTrue(os.path.islink(staged_link))
        self.assertEqual(os.readlink(staged_link), "usr/lib")
        with open(root + os.path.join(host, "usr", "lib", "libx.so")) as f:
            self.assertEqual(f.read(), "x")

    def test_stage_refuses_relative_and_missing_paths(self):
        root = self.path("stage")
        os.makedirs(root)
        for bad in ["relative/path", self.path("nope")]:
            with self.assertRaises(SystemExit):
                with contextlib.redirect_stderr(io.StringIO()):
                    run("stage", root, bad)

    def test_a_layer_is_sorted_owned_and_the_same_twice(self):
        root = self.make_root()
        a, b = self.path("a.tar"), self.path("b.tar")
        for out in (a, b):
            run("layer", out, root, "--mtime", "7", "--owner", "home/app=10001:10001")
        with open(a, "rb") as f1, open(b, "rb") as f2:
            self.assertEqual(f1.read(), f2.read(), "a layer is reproducible")
        with tarfile.open(a) as t:
            members = t.getmembers()
        names = [m.name for m in members]
        # Each directory's entries sorted, directories before their contents.
        self.assertEqual(names, ["bin", "home", "usr", "home/app", "usr/bin", "usr/bin/tool"])
        by_name = {m.name: m for m in members}
        self.assertEqual((by_name["home/app"].uid, by_name["home/app"].gid), (10001, 10001))
        self.assertEqual(by_name["usr/bin/tool"].uid, 0)
        self.assertTrue(by_name["bin"].issym())
        self.assertTrue(all(m.mtime == 7 for m in members))
        run("layer", self.path("c.tar"), root, "--skip-dirs")
        with tarfile.open(self.path("c.tar")) as t:
            self.assertEqual(t.getnames(), ["bin", "usr/bin/tool"])

    def test_an_oci_layout_names_its_layer_config_and_manifest_by_digest(self):
        root = self.make_root()
        layer = self.path("layer.tar")
        run("layer", layer, root)
        out = self.path("image.tar")
        config = {"Entrypoint": ["/usr/bin/tool"], "User": "10001"}
        digest = run("oci", out, "--ref", "cloudkon.local/worker:e2e", "--ref-name", "e2e",
                     "--config", json.dumps(config), "--layer", layer, "the root").strip()
        with tarfile.open(out) as t:
            files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
        blob = lambda d: files["blobs/sha256/" + d[len("sha256:"):]]
        for name, data in files.items():
            if name.startswith("blobs/sha256/"):
                self.assertEqual(hashlib.sha256(data).hexdigest(), name.rsplit("/", 1)[1])
        self.assertEqual(json.loads(files["oci-layout"]), {"imageLayoutVersion": "1.0.0"})
        index = json.loads(files["index.json"])
        entry = index["manifests"][0]
        self.assertEqual(entry["digest"], digest)
        self.assertEqual(entry["annotations"]["io.containerd.image.name"], "cloudkon.local/worker:e2e")
        manifest = json.loads(blob(digest))
        image_config = json.loads(blob(manifest["config"]["digest"]))
        self.assertEqual(image_config["config"], config)
        with open(layer, "rb") as f:
            layer_digest = "sha256:" + hashlib.sha256(f.read()).hexdigest()
        self.assertEqual([l["digest"] for l in manifest["layers"]], [layer_digest])
        self.assertEqual(image_config["rootfs"]["diff_ids"], [layer_digest])

    def test_dpkg_version_reads_an_installed_package(self):
        root = self.path("deb")
        os.makedirs(os.path.join(root, "var", "lib", "dpkg"))
        with open(os.path.join(root, "var", "lib", "dpkg", "status"), "w") as f:
            f.write("Package: ffmpeg\nStatus: install ok installed\nVersion: 7:5.1.6-0+deb12u1\n\n"
                    "Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n")
        tar = self.path("deb.tar")
        run("layer", tar, root)
        self.assertEqual(run("dpkg-version", tar, "ffmpeg").strip(), "7:5.1.6-0+deb12u1")
        self.assertEqual(run("dpkg-version", tar, "gone").strip(), "")


if __name__ == "__main__":
    unittest.main()
