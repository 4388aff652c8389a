"""Point-cloud I/O (open3d and numpy formats, meshes), preparation, bad input, shards, converters, benchmark."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mimx.modalities.points.clouds import prepare_cloud
from mimx.modalities.points.data import PointDataConfig, PointDecoder, points_stream
from mimx.modalities.points.io import decode_points, encode_npy, read_off, read_points, sample_surface, write_ply

o3d = pytest.importorskip("open3d")

CUBE_V = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
CUBE_F = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                   [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])


def cube_mesh():
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(CUBE_V), o3d.utility.Vector3iVector(CUBE_F))
    mesh.compute_triangle_normals()
    mesh.compute_vertex_normals()
    return mesh


def on_cube_surface(points: np.ndarray) -> bool:
    return bool(np.all(np.isclose(np.abs(points).max(axis=1), 1.0, atol=1e-5)))


@pytest.fixture
def cloud() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)


def test_point_formats_read_back_the_same_points(tmp_path, cloud):
    write_ply(tmp_path / "a.ply", cloud)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.astype(np.float64)))
    o3d.io.write_point_cloud(str(tmp_path / "a.pcd"), pcd)
    np.save(tmp_path / "a.npy", np.column_stack([cloud, np.ones(len(cloud))]))  # extra columns are dropped
    np.savez(tmp_path / "a.npz", points=cloud)
    np.savetxt(tmp_path / "a.xyz", cloud, header=str(len(cloud)), comments="")  # a count line first
    for name in ("a.ply", "a.pcd", "a.npy", "a.npz", "a.xyz"):
        np.testing.assert_allclose(read_points(tmp_path / name), cloud, atol=1e-5, err_msg=name)
    # the same bytes inside a shard decode the same way
    np.testing.assert_allclose(decode_points((tmp_path / "a.ply").read_bytes(), "ply"), cloud, atol=1e-6)


@pytest.mark.parametrize("suffix", [".obj", ".stl", ".ply", ".off"])
def test_meshes_are_sampled_uniformly_on_their_surface(tmp_path, suffix):
    path = tmp_path / f"cube{suffix}"
    if suffix == ".off":
        lines = ["OFF", "# a comment", "8 12 0"] + [" ".join(map(str, v)) for v in CUBE_V]
        lines += [f"3 {a} {b} {c}" for a, b, c in CUBE_F]
        path.write_text("\n".join(lines))
    else:
        o3d.io.write_triangle_mesh(str(path), cube_mesh())
    points = read_points(path, mesh_points=6000, seed=3)
    assert points.shape == (6000, 3) and on_cube_surface(points)
    # uniform over the area: each of the 6 faces gets about a sixth
    faces = np.abs(points).argmax(1) * 2 + (points[np.arange(len(points)), np.abs(points).argmax(1)] > 0)
    counts = np.bincount(faces, minlength=6)
    assert counts.min() > 800 and counts.max() < 1200
    np.testing.assert_array_equal(points, read_points(path, mesh_points=6000, seed=3))  # seeded


def test_off_reader_triangulates_polygons_and_skips_colours():
    data = b"COFF\n4 1 0\n0 0 0 255 0 0 255\n1 0 0 0 255 0 255\n1 1 0 0 0 255 255\n0 1 0 9 9 9 255\n4 0 1 2 3\n"
    vertices, faces = read_off(data)
    assert vertices.shape == (4, 3) and faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    points = sample_surface(vertices, faces, 100)
    assert points[:, 2].max() == 0 and points[:, :2].min() >= 0 and points[:, :2].max() <= 1
    # ModelNet's glued header, integer face colours, a vertex wrapped over two lines, counts on the header line
    for data in (b"OFF4 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n3 0 1 2 255 0 0\n3 0 2 3 0 255 0\n",
                 b"OFF 4 2 0\n0 0\n0\n1 0 0\n1 1 0\n0 1 0\n3 0 1 2 1.0 0.5 0.5 1.0\n3 0 2 3\n"):
        vertices, faces = read_off(data)
        assert vertices.tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
        assert faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    for data, message in ((b"OFF\n4 2 0\n0 0 0\n1 0 0\n", "ends before them"),
                          (b"OFF\n3 2 0\n0 0 0\n1 0 0\n1 1 0\n3 0 1 2\n", "announces 2 faces"),
                          (b"OFF\n3 1 0\n0 0 0\n1 0 0\n1 1 0\n4 0 1 2\n", "lists 3 ids"),
                          (b"PLY\n", "no OFF header")):
        with pytest.raises(ValueError, match=message):
            read_off(data)


@pytest.mark.parametrize("writer", ["ply_ascii", "ply_binary", "pcd_ascii", "pcd_binary", "pcd_compressed"])
def test_numpy_readers_match_open3d_on_its_own_files(tmp_path, cloud, writer):
    """mimx parses .ply/.pcd with numpy (fork-safe in data workers); open3d is the reference."""
    kind, mode = writer.split("_")
    path = tmp_path / f"a.{kind}"
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(np.random.default_rng(1).random((len(cloud), 3)))
    pcd.normals = o3d.utility.Vector3dVector(np.random.default_rng(2).normal(size=(len(cloud), 3)))
    assert o3d.io.write_point_cloud(str(path), pcd, write_ascii=mode == "ascii", compressed=mode == "compressed")
    reference = np.asarray(o3d.io.read_point_cloud(str(path)).points, dtype=np.float32)
    np.testing.assert_allclose(read_points(path), reference, atol=1e-5)


@pytest.mark.parametrize(("suffix", "ascii_"), [(".ply", True), (".ply", False), (".obj", True), (".stl", True),
                                               (".stl", False)])
def test_mesh_readers_match_open3d_vertices_and_faces(tmp_path, suffix, ascii_):
    from mimx.modalities.points.formats import read_obj, read_ply, read_stl

    mesh = o3d.geometry.TriangleMesh.create_sphere(radius=0.7, resolution=6)
    mesh.compute_triangle_normals()
    v, t = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    path = tmp_path / f"m{suffix}"
    if suffix == ".stl" and ascii_:  # open3d writes binary STL only
        facets = ["facet normal 0 0 1\nouter loop\n" + "".join(f"vertex {x:.7e} {y:.7e} {z:.7e}\n" for x, y, z in v[f])
                  + "endloop\nendfacet\n" for f in t]
        path.write_text("solid sphere\n" + "".join(facets) + "endsolid sphere\n")
    else:
        assert o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=ascii_)
    vertices, triangles = {".ply": read_ply, ".obj": read_obj, ".stl": read_stl}[suffix](path.read_bytes())
    # STL stores each facet's corners (no shared vertices): compare the triangles' corner positions
    np.testing.assert_allclose(vertices[triangles], v[t], atol=1e-5 if ascii_ else 1e-6)


def test_truncated_and_inconsistent_files_raise_saying_what_is_missing(tmp_path, cloud):
    full = write_ply(tmp_path / "a.ply", cloud).read_bytes()
    with pytest.raises(ValueError, match=r"x\.ply: .*announces 500 vertex records, the file is truncated after 3"):
        decode_points(full[:len(full) - len(cloud) * 12 + 40], "ply", name="x.ply")
    ascii_ply = b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    with pytest.raises(ValueError, match="truncated after 2"):
        decode_points(ascii_ply + b"end_header\n0 0 0\n1 1 1\n", "ply")
    faces = ascii_ply.replace(b"3", b"2", 1) + b"element face 1\nproperty list uchar int vertex_indices\n"
    with pytest.raises(ValueError, match="refers to vertex 5"):
        decode_points(faces + b"end_header\n0 0 0\n1 1 1\n3 0 1 5\n", "ply")
    pcd = b"VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 9\nHEIGHT 1\nPOINTS 9\nDATA binary\n"
    with pytest.raises(ValueError, match="announces 9 points, the file is truncated after 2"):
        decode_points(pcd + cloud[:2].tobytes(), "pcd")
    with pytest.raises(ValueError, match="facet corners"):
        decode_points(b"solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\n", "stl")


PLY3 = (b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        b"element face 1\nproperty list uchar int vertex_indices\n")
BIN4 = (b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
        b"property float z\nelement face 2\nproperty list char int vertex_indices\nend_header\n" + bytes(48))


@pytest.mark.parametrize(("data", "key", "message"), [
    (PLY3 + b"end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1\n", "ply", "face record '3 0 1' does not match"),
    (PLY3 + b"end_header\n0 0 0\n1 0 0\n0 1 0\n1 1 0\n3 0 1 2\n", "ply", "1 value.s. more than the header"),
    (BIN4 + b"\x03" + np.array([0, 1, 2], "<i4").tobytes() + b"\xff" + bytes(12), "ply", "list of length -1"),
    (b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 2\nDATA ascii\n0 0 0\n1 1\n", "pcd", "point 1 has 2 values"),
    (b"v 0 0\nv 1 0\nv 0 1\n", "obj", "not a vertex or face"),
    (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "obj", "ids start at 1"),
    (b"solid exporter" + bytes(66) + (4).to_bytes(4, "little") + bytes(100), "stl", "no facet read"),
])
def test_inconsistent_files_raise_instead_of_returning_garbage(data, key, message):
    with pytest.raises(ValueError, match=message):
        decode_points(data, key)


def test_text_meshes_read_alike_through_the_table_and_record_paths():
    """Uniform records go through numpy's table parser, mixed ones record by record: the same mesh either way."""
    from mimx.modalities.points.formats import read_obj, read_off, read_ply

    square = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    fan = [[0, 1, 2], [0, 2, 3]]
    obj_v = "v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nvt 0.5 0.5\n  v 1 1 0\nv\t0 1 0\nvn 0 0 1\n# f 9 9 9\n"
    for faces in ("f 1/1/1 2/2/1 3//1\nf 1 3 4\n", "f 1 2 3\r\nf -4 -2 -1\n", "f 1 2 3 4\n", "f 1 2 3 4\ng x\n"):
        vertices, triangles = read_obj((obj_v + faces).encode())
        assert vertices.tolist() == square and triangles.tolist() == fan, faces
    head = ("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
            "element face {}\nproperty list uchar int vertex_indices\nproperty uchar red\nend_header\n"
            "0 0 0\n1 0 0\n1 1 0\n0 1 0\n")
    for faces in ("3 0 1 2 9\n3 0 2 3 9\n", "4 0 1 2 3 9\n3 0 2 3 9\n"):
        vertices, triangles = read_ply((head.format(faces.count("\n")) + faces).encode())
        assert vertices.tolist() == square and triangles.tolist()[:2] == fan, faces
    for faces in ("3 0 1 2\n3 0 2 3\n", "4 0 1 2 3\n3 0 2 3 1 0 0\n"):
        vertices, triangles = read_off(f"OFF\n4 {faces.count(chr(10))} 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n{faces}".encode())
        assert vertices.tolist() == square and triangles.tolist()[:2] == fan, faces
    with pytest.raises(ValueError, match="refers to vertex 4"):  # ids checked on the table path too
        read_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 5\n")


def test_header_quirks_that_valid_files_have():
    from mimx.modalities.points.formats import read_off, read_pcd, read_ply

    points = np.random.default_rng(0).random((5, 3)).astype("<f4")
    comment = (b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
               b"property float z\ncomment written up to end_header\nend_header\n")  # not the header's end
    np.testing.assert_array_equal(read_ply(comment + points.tobytes())[0], points)
    padded = (b"FIELDS x y z _ normal_x _\nSIZE 4 4 4 1 4 1\nTYPE F F F U F U\nCOUNT 1 1 1 4 1 4\nWIDTH 2\n"
              b"POINTS 2\nDATA ascii\n1 2 3 0 0 0 0 5 0 0 0 0\n4 5 6 0 0 0 0 5 0 0 0 0\n")  # PCL's padding fields
    assert read_pcd(padded).tolist() == [[1, 2, 3], [4, 5, 6]]
    for kind in (b"OFF", b"COFF"):  # RGB after xyz (no alpha): one vertex per line, whatever follows
        vertices, faces = read_off(kind + b"\n3 1 0\n0 0 0 255 0 0\n1 0 0 255 0 0\n0 1 0 255 0 0\n3 0 1 2\n")
        assert vertices.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]] and faces.tolist() == [[0, 1, 2]]


def test_ply_members_decode_in_forked_workers(tmp_path, cloud):
    """A .ply/.pcd inside a shard, read by 2 forked workers after torch's own OpenMP pool has started
    (open3d's reader deadlocked there); the truncated one is skipped and named."""
    from mimx.data.stream import StreamLoader

    torch.ones(256, 256) @ torch.ones(256, 256)  # start torch's thread pool in the parent first
    full = write_ply(tmp_path / "a.ply", cloud).read_bytes()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.astype(np.float64)))
    o3d.io.write_point_cloud(str(tmp_path / "a.pcd"), pcd)
    good = [{"__key__": f"p{i}", "ply": full, "cls": b"1"} for i in range(4)]
    good += [{"__key__": f"q{i}", "pcd": (tmp_path / "a.pcd").read_bytes(), "cls": b"2"} for i in range(4)]
    _tar(tmp_path / "s-000000.tar", good[:4] + [{"__key__": "cut", "ply": full[:-100], "cls": b"0"}])
    _tar(tmp_path / "s-000001.tar", good[4:])
    cfg = PointDataConfig(shards=str(tmp_path / "s-{000000..000001}.tar"), num_points=128, shuffle=0)
    loader = StreamLoader(points_stream(cfg, PointDecoder(cfg, train=False), batch_size=2, epochs=1),
                          num_workers=2, timeout=120)
    labels = torch.cat([batch["label"] for batch in loader])
    assert sorted(labels.tolist()) == [1] * 4 + [2] * 4
    assert loader.skips.count == 1 and "cut" in loader.skips.state_dict()["examples"][0]


def test_unreadable_and_empty_files_raise_naming_the_file(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    (tmp_path / "empty.xyz").write_text("")
    (tmp_path / "a.vtk").write_text("x")
    for name, match in (("bad.npy", "bad.npy"), ("empty.xyz", "no point"), ("a.vtk", "unsupported")):
        with pytest.raises(ValueError, match=match):
            read_points(tmp_path / name)


def test_prepare_drops_nonfinite_pads_caps_and_normalises(cloud):
    rng = np.random.default_rng(0)
    bad = cloud.copy()
    bad[:7, 1] = np.nan
    bad[7:9, 0] = np.inf
    ready = prepare_cloud(bad, 256, rng)
    assert ready.dropped == 9 and not ready.padded and not ready.capped
    assert np.isfinite(ready.points).all() and ready.points.shape == (256, 3)
    np.testing.assert_allclose(np.linalg.norm(ready.points, axis=1).max(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ready.points.mean(0), 0, atol=1e-5)
    few = prepare_cloud(cloud[:40], 256, rng)
    assert few.padded and few.points.shape == (256, 3)
    assert len(np.unique(few.points, axis=0)) == 40  # every original point, repeats to fill
    huge = prepare_cloud(np.random.default_rng(1).normal(size=(200_000, 3)), 256, rng, max_points=4096)
    assert huge.capped and huge.points.shape == (256, 3)
    fps = prepare_cloud(cloud, 64, rng, sample="fps", normalize=False)
    assert len(np.unique(fps.points, axis=0)) == 64
    with pytest.raises(ValueError, match="no finite point"):
        prepare_cloud(np.full((10, 3), np.nan), 16, rng)


def _tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample.pop("__key__")
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_stream_skips_and_counts_corrupt_clouds(tmp_path, cloud):
    nan = np.full((50, 3), np.nan, dtype=np.float32)
    good = [{"__key__": f"g{i}", "npy": encode_npy(cloud * (i + 1)), "cls": b"1"} for i in range(5)]
    bad = [{"__key__": "corrupt", "npy": b"\x93NUMPY garbage", "cls": b"0"},
           {"__key__": "allnan", "npy": encode_npy(nan), "cls": b"0"},
           {"__key__": "nocloud", "txt": b"hello", "cls": b"0"},
           {"__key__": "badlabel", "npy": encode_npy(cloud), "cls": b"cat"}]
    _tar(tmp_path / "s-000000.tar", good[:3] + bad[:2])
    _tar(tmp_path / "s-000001.tar", good[3:] + bad[2:])
    cfg = PointDataConfig(shards=str(tmp_path), num_points=128, shuffle=0)
    stream = points_stream(cfg, PointDecoder(cfg, train=False), batch_size=8, epochs=1)
    batches = list(stream)
    points = torch.cat([b["points"] for b in batches if "points" in b])
    skips = [s for b in batches for s in b["_skips"]]
    assert points.shape == (5, 1, 128, 3)
    assert len(skips) == 4 and any("corrupt" in s for s in skips) and any("badlabel" in s for s in skips)


def test_eval_views_are_the_plain_cloud_then_scaled_votes(cloud):
    cfg = PointDataConfig(num_points=128, test_votes=3)
    sample = {"__key__": "x", "npy": encode_npy(cloud), "cls": b"2"}
    out = PointDecoder(cfg, train=False)(sample, np.random.default_rng(0))
    assert out["points"].shape == (3, 128, 3) and out["label"] == 2
    plain = out["points"][0]
    for view in out["points"][1:]:  # a per-axis scale of the same points
        ratio = view / plain
        assert torch.allclose(ratio, ratio[0:1].expand_as(ratio), atol=1e-4)


def test_shards_command_reads_mixed_formats_and_reports_bad_files(tmp_path, cloud, capsys):
    from mimx.cli import main

    src = tmp_path / "src"
    (src / "chairs").mkdir(parents=True)
    (src / "tables").mkdir()
    write_ply(src / "chairs" / "a.ply", cloud)
    np.save(src / "chairs" / "b.npy", cloud[:100])
    o3d.io.write_triangle_mesh(str(src / "tables" / "c.obj"), cube_mesh())
    (src / "tables" / "broken.off").write_text("OFF\n3 1 0\n0 0\n")
    out = tmp_path / "out"
    assert main(["points", "shards", str(src), str(out), "--mesh-points", "300", "--max-points", "200"]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 point clouds (2 classes)" in captured.out and "broken.off" in captured.err
    assert json.loads((out / "classes.json").read_text()) == ["chairs", "tables"]
    cfg = PointDataConfig(shards=str(out), num_points=64, shuffle=0)
    batch = next(iter(points_stream(cfg, PointDecoder(cfg, train=False), batch_size=3, epochs=1)))
    assert sorted(batch["label"].tolist()) == [0, 0, 1]


def test_scanobjectnn_and_shapenet_converters(tmp_path):
    h5py = pytest.importorskip("h5py")
    from mimx.datasets.point_converters import convert_scanobjectnn, convert_shapenet

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 4)):
        with h5py.File(tmp_path / f"{split}.h5", "w") as f:
            f["data"] = rng.normal(size=(count, 2048, 3)).astype(np.float32)
            f["label"] = np.arange(count) % 3
    report = convert_scanobjectnn(tmp_path / "train.h5", tmp_path / "test.h5", tmp_path / "sonn")
    assert report["train"]["samples"] == 6 and report["test"]["samples"] == 4
    cfg = PointDataConfig(shards=str(tmp_path / "sonn" / "test"), num_points=512, shuffle=0)
    batch = next(iter(points_stream(cfg, PointDecoder(cfg, train=False), batch_size=4, epochs=1)))
    assert batch["label"].tolist() == [0, 1, 2, 0]

    pcs, lists = tmp_path / "shapenet_pc", tmp_path / "ShapeNet-55"
    pcs.mkdir()
    lists.mkdir()
    names = {"train": ["02691156-a.npy", "03001627-b.npy", "02691156-c.npy"],
             "test": ["03001627-d.npy", "x-missing.npy"]}
    for split, files in names.items():
        (lists / f"{split}.txt").write_text("\n".join(files) + "\n")
        for name in files:
            if "missing" not in name:
                np.save(pcs / name, rng.normal(size=(8192, 3)).astype(np.float32))
    report = convert_shapenet(lists, pcs, tmp_path / "sn")
    assert report["train"]["samples"] == 3 and report["test"]["samples"] == 1
    assert any("missing" in s for s in report["test"]["skipped"])
    assert json.loads((tmp_path / "sn" / "train" / "classes.json").read_text()) == ["02691156", "03001627", "x"]



def _read_shards(folder: Path) -> dict[str, dict]:
    """``{key: {"points", "cls", "json"}}`` of the shards in ``folder``, decoded."""
    from mimx.data.shards import expand_shards
    from mimx.data.stream import read_raw

    return {s["__key__"]: {"points": np.load(io.BytesIO(s["npy"])), "cls": int(s["cls"]),
                           "json": json.loads(s["json"])} for s in read_raw(expand_shards(str(folder)), lambda k: True)}


def test_modelnet_normal_resampled_converter(tmp_path, capsys):
    from mimx.datasets.point_converters import convert_modelnet, main

    root = tmp_path / "modelnet40_normal_resampled"
    classes = ["chair", "airplane", "flower_pot"]  # label order is the file's, not alphabetical
    splits = {"train": ["airplane_0001", "flower_pot_0001", "chair_0001", "chair_0002", "airplane_0002"],
              "test": ["flower_pot_0002", "chair_0003", "airplane_0003"]}
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(0)
    written = {}
    for split, names in splits.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            cls = name.rsplit("_", 1)[0]
            (root / cls).mkdir(exist_ok=True)
            rows = rng.normal(size=(50, 6)).astype(np.float32)
            if name == "chair_0002":  # corrupt: 5 columns
                rows = rows[:, :5]
            np.savetxt(root / cls / f"{name}.txt", rows, fmt="%.17g", delimiter=",")
            written[f"{split}-{name}"] = rows[:, :3]
    report = convert_modelnet(root, tmp_path / "out")
    assert report["train"]["samples"] == 4 and report["test"]["samples"] == 3
    assert len(report["train"]["skipped"]) == 1 and "chair_0002.txt" in report["train"]["skipped"][0]
    assert "columns" in report["train"]["skipped"][0] and not report["test"]["skipped"]
    for split in ("train", "test"):
        assert json.loads((tmp_path / "out" / split / "classes.json").read_text()) == classes
        samples = _read_shards(tmp_path / "out" / split)
        assert len(samples) == len(splits[split]) - (split == "train")
        for key, sample in samples.items():
            name = key.split("-", 1)[1]
            cls = name.rsplit("_", 1)[0]
            assert sample["points"].dtype == np.float32 and sample["points"].shape == (50, 3)
            np.testing.assert_array_equal(sample["points"], written[key])
            assert sample["cls"] == classes.index(cls)
            assert sample["json"] == {"label": classes.index(cls), "class": cls, "source": f"{cls}/{name}.txt"}
    capsys.readouterr()
    assert main(["modelnet", str(root), str(tmp_path / "cli")]) == 0
    captured = capsys.readouterr()
    assert "wrote 4 train clouds (3 classes)" in captured.out and "chair_0002.txt" in captured.err


CUBE_OFF = "OFF8 6 0\n" + "\n".join(" ".join(map(str, v)) for v in CUBE_V) + "\n" + "\n".join(
    f"4 {a} {b} {c} {d}" for a, b, c, d in [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4),
                                            (1, 5, 7, 3)]) + "\n"  # header glued to the counts, quad faces
TETRA_OFF = "OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n"


def test_modelnet_off_mesh_converter_is_seeded_and_samples_the_surface(tmp_path):
    from mimx.datasets.point_converters import convert_modelnet

    root = tmp_path / "ModelNet40"
    meshes = {"cube/train/cube_0001.off": CUBE_OFF, "cube/test/cube_0002.off": CUBE_OFF,
              "tetra/train/tetra_0001.off": TETRA_OFF, "tetra/test/tetra_0002.off": TETRA_OFF,
              "tetra/test/tetra_0003.off": "OFF\n3 1 0\n0 0\n"}  # truncated: skipped
    for name, text in meshes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    report = convert_modelnet(root, tmp_path / "a", points=512)
    assert report["train"]["samples"] == 2 and report["test"]["samples"] == 2
    assert len(report["test"]["skipped"]) == 1 and "tetra_0003.off" in report["test"]["skipped"][0]
    samples = {**_read_shards(tmp_path / "a" / "train"), **_read_shards(tmp_path / "a" / "test")}
    assert sorted(samples) == ["test-cube_0002", "test-tetra_0002", "train-cube_0001", "train-tetra_0001"]
    for key, sample in samples.items():
        cls = "cube" if "cube" in key else "tetra"
        points = sample["points"]
        assert points.shape == (512, 3) and points.dtype == np.float32
        assert sample["cls"] == ["cube", "tetra"].index(cls) and sample["json"]["class"] == cls
        if cls == "cube":  # on a face of the [-1, 1] cube
            np.testing.assert_allclose(np.abs(points).max(axis=1), 1.0, atol=1e-5)
        else:  # in the unit corner, on a coordinate plane or on x + y + z = 1
            assert points.min() >= -1e-6 and points.max() <= 1 + 1e-6
            on_face = (np.abs(points).min(axis=1) < 1e-5) | (np.abs(points.sum(axis=1) - 1) < 1e-5)
            assert on_face.all()
    assert json.loads((tmp_path / "a" / "test" / "classes.json").read_text()) == ["cube", "tetra"]
    assert not np.array_equal(samples["train-cube_0001"]["points"], samples["test-cube_0002"]["points"])  # per file
    convert_modelnet(root, tmp_path / "b", points=512)
    for split in ("train", "test"):
        shards = sorted((tmp_path / "a" / split).glob("*.tar"))
        assert shards and all(s.read_bytes() == (tmp_path / "b" / split / s.name).read_bytes() for s in shards)


def test_modelnet_converter_names_what_a_wrong_root_lacks(tmp_path, capsys):
    from mimx.config import UserError
    from mimx.datasets.point_converters import convert_modelnet, main

    root = tmp_path / "downloads"
    (root / "modelnet40_normal_resampled" / "airplane").mkdir(parents=True)
    (root / "modelnet40_normal_resampled" / "modelnet40_shape_names.txt").write_text("airplane\n")
    with pytest.raises(UserError, match="downloads is neither ModelNet layout") as error:
        convert_modelnet(root, tmp_path / "out")
    assert "modelnet40_shape_names.txt" in str(error.value) and "<class>/train/*.off" in str(error.value)
    assert "did you mean" in str(error.value) and "modelnet40_normal_resampled" in str(error.value)
    with pytest.raises(UserError, match="lacks modelnet40_train.txt, modelnet40_test.txt"):
        convert_modelnet(root / "modelnet40_normal_resampled", tmp_path / "out")
    capsys.readouterr()
    assert main(["modelnet", str(root), str(tmp_path / "out")]) == 2
    assert "neither ModelNet layout" in capsys.readouterr().err and not (tmp_path / "out").exists()

def test_shape_benchmark_splits_are_disjoint_draws_of_real_meshes(tmp_path):
    pytest.importorskip("mimx.datasets.shapes").pymeshlab_folder()
    from mimx.datasets.shapes import build_shapes

    report = build_shapes(tmp_path, counts={"train": 2, "val": 1, "test": 1})
    assert report == {"train": {"samples": 10, "shards": 5}, "val": {"samples": 5, "shards": 5},
                      "test": {"samples": 5, "shards": 5}}
    assert json.loads((tmp_path / "classes.json").read_text()) == ["airplane", "bone", "bunny", "cow", "face_scan"]
    seen = {}
    for split in ("train", "val", "test"):
        for shard in sorted((tmp_path / split).glob("*.tar")):
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.name.endswith(".npy"):
                        points = np.load(io.BytesIO(tar.extractfile(member).read()))
                        assert 1024 <= len(points) <= 4096 and np.isfinite(points).all()
                        seen[member.name] = points[:5].tobytes()
    assert len(seen) == 20 and len(set(seen.values())) == 20  # every instance a distinct draw
