"""`lensdesign export`: round trips through KLayout, tifffile and an STL parser, against the quantized design."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import klayout.db as kdb
import numpy as np
import pytest
import tifffile
import torch

from lensdesign.fabrication.gds import label_polygons
from lensdesign.fabrication.quantize import level_index, quantize, staircase_efficiency
from lensdesign.fabrication.rings import circle_polygon, classify, ring_layout
from lensdesign.fabrication.rules import FocusModel, run_lengths, shifted_coverage
from lensdesign.fabrication.stl import field_mesh
from lensdesign.optics.psf import OpticalSystem, aperture_mask
from lensdesign.rundir import RunDir, design_meta
from lensdesign.spec import parse_spec
from tests.conftest import TINY, run_cli, write_spec

# ---- independent readers -----------------------------------------------------------------------------------


def raster_contours(contours: list[list[np.ndarray]], n: int, pitch_nm: int) -> np.ndarray:
    """Pixel-centre rasterization (even-odd, exact integer scanline) of polygons given as lists of closed contours.

    Pixel (i, j) is centred at ((j - n//2)·p, (i - n//2)·p) nm. Fails if a pixel centre lies exactly on an edge.
    """
    c = n // 2
    out = np.zeros((n, n), dtype=bool)
    ys = (np.arange(n, dtype=np.int64) - c) * pitch_nm
    for poly in contours:
        e = np.concatenate([np.concatenate([ct, np.roll(ct, -1, axis=0)], axis=1) for ct in poly]).astype(np.int64)
        x1, y1, x2, y2 = e.T
        lo, hi = min(y1.min(), y2.min()), max(y1.max(), y2.max())
        parity = np.zeros((n, n + 1), dtype=np.int64)
        for i in np.nonzero((ys >= lo) & (ys <= hi))[0]:
            y = ys[i]
            cross = (y1 > y) != (y2 > y)
            if not cross.any():
                continue
            a, b, cc, d = x1[cross], y1[cross], x2[cross], y2[cross]
            den = d - b
            num = a * den + (y - b) * (cc - a)  # x_crossing · den
            sgn = np.sign(den)
            num, den = num * sgn, den * sgn
            # pixels j with x_j < x_crossing toggle: x_j·den < num  ⟺  j − c < num / (p·den)
            k = -((-num) // (pitch_nm * den)) + c  # ceil
            on_edge = (num % (pitch_nm * den) == 0) & (k >= 0) & (k < n)
            assert not on_edge.any(), "a pixel centre lies on a polygon edge"
            np.add.at(parity[i], np.clip(k, 0, n), 1)
        inside = (np.cumsum(parity[:, ::-1], axis=1)[:, ::-1][:, 1:] % 2).astype(bool)
        out |= inside
    return out


def klayout_masks(path: Path, n: int, pitch_nm: int) -> dict[tuple[int, int], np.ndarray]:
    """Read a GDS/OASIS with KLayout and rasterize every (layer, datatype) at the pixel centres."""
    layout = kdb.Layout()
    layout.read(str(path))
    assert abs(layout.dbu - 0.001) < 1e-12  # 1 nm in µm user units
    top = layout.top_cell()
    out = {}
    for li in layout.layer_indexes():
        info = layout.get_info(li)
        region = kdb.Region(top.begin_shapes_rec(li))  # `layout` stays alive while the region is used
        polys = []
        for p in region.each():
            contours = [np.array([[q.x, q.y] for q in p.each_point_hull()])]
            contours += [np.array([[q.x, q.y] for q in p.each_point_hole(h)]) for h in range(p.holes())]
            assert p.num_points() <= 4094
            polys.append(contours)
        out[(info.layer, info.datatype)] = raster_contours(polys, n, pitch_nm)
    return out


def read_stl(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    data = path.read_bytes()
    (count,) = struct.unpack("<I", data[80:84])
    rec = np.frombuffer(data[84:], dtype=np.dtype([("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    assert len(rec) == count and len(data) == 84 + 50 * count
    return data[:80].decode("ascii"), rec["v"].astype(np.float64), rec["n"].astype(np.float64)


def assert_watertight(tris: np.ndarray) -> float:
    """Every edge shared by exactly two triangles with opposite orientation; returns the signed volume."""
    verts, inv = np.unique(tris.reshape(-1, 3), axis=0, return_inverse=True)
    f = inv.reshape(-1, 3)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    m = len(verts) + 1
    fwd = e[:, 0] * m + e[:, 1]
    rev = e[:, 1] * m + e[:, 0]
    _, counts = np.unique(fwd, return_counts=True)
    assert counts.max() == 1, "a directed edge is used twice"
    assert np.isin(rev, fwd).all(), "an edge lacks its opposite"
    area = np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    assert area.min() > 0
    return float(np.einsum("ij,ij->i", tris[:, 0], np.cross(tris[:, 1], tris[:, 2])).sum() / 6)


def read_tiff(path: Path) -> tuple[np.ndarray, float, dict]:
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
        assert xr == yr
        assert page.tags["Orientation"].value == 4  # row 0 at the bottom
        return page.asarray(), 1e-2 * xr[1] / xr[0], json.loads(page.description)


# ---- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresnel_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fresnel")
    spec = write_spec(tmp, {**TINY, "fabrication": {**TINY["fabrication"], "misalignment": "2 um"}})
    run = tmp / "run"
    r = run_cli("baseline", spec, "--kind", "fresnel", "--out", run)
    assert r.returncode == 0, r.stderr
    r = run_cli("export", run, "--tiff", "--gds", "--oasis", "--stl", "--field", "300um")
    assert r.returncode == 0, r.stderr
    assert "staircase" in r.stdout and "tiny.gds" in r.stdout
    return run


def make_radial_run(path: Path, ring_width: float, process: str = "multilevel", levels: int = 8) -> Path:
    """A run directory like optimize writes for `parameterization: radial`: ring profile + pixel map."""
    from lensdesign.baselines import focal_length, wave_height
    from lensdesign.optics.psf import plan_grid
    from lensdesign.optics.surfaces import RadialSurface

    d = {**TINY, "optics": {**TINY["optics"], "aperture": "0.25 mm", "parameterization": "radial"},
         "fabrication": {"process": process, "levels": levels, "min_feature": "4 um"}}
    spec = parse_spec(d)
    g = plan_grid(spec)
    surf = RadialSurface(g.n, spec.optics.pitch, spec.max_height_m, ring_width)
    r = (torch.arange(surf.rings, dtype=torch.float64) + 0.5) * surf.ring_width
    phase_waves = -(r**2) / (2 * focal_length(spec) * spec.design_wavelength_m)
    with torch.no_grad():
        surf.param.copy_((phase_waves * wave_height(spec)).float())
    meta = design_meta(spec, "test-radial", g.n, ring_width_m=surf.ring_width)
    RunDir(path).write_design(spec, surf.height(), meta, tensors={"radial_profile_m": surf.ring_heights().float()})
    return path


# ---- end to end: multilevel Fresnel baseline -----------------------------------------------------------------


def test_gds_masks_rebuild_levels_exactly(fresnel_export: Path) -> None:
    run = fresnel_export
    out = run / "export"
    rules = json.loads((out / "tiny.rules.json").read_text())
    levels, pitch, desc = read_tiff(out / "tiny.levels.tiff")
    assert levels.dtype == np.uint8 and abs(pitch - 4e-6) < 1e-15 and desc["pitch_m"] == 4e-6
    n = levels.shape[0]
    for path in (out / "tiny.gds", out / "tiny.oas"):
        shapes = klayout_masks(path, n, 4000)
        rebuilt = np.zeros_like(levels, dtype=np.int64)
        for j in range(3):
            m = shapes[(j + 1, 0)]
            assert m.sum() > 100, f"mask {j + 1} is empty"
            assert int((m != ((levels >> j) & 1).astype(bool)).sum()) == 0
            rebuilt += m.astype(np.int64) << j
        assert np.array_equal(rebuilt, levels)
        assert shapes[(100, 0)].sum() > 0  # aperture outline on its own layer
    # merged polygons, not pixel squares
    for m in rules["masks"]:
        assert m["polygons"] < 0.25 * m["fill_factor"] * n * n
        assert m["max_vertices_per_polygon"] <= 4094
    # cell names carry the etch depths, and rules.json lists them
    layout = kdb.Layout()
    layout.read(str(out / "tiny.gds"))
    names = {layout.cell(i).name for i in range(layout.cells())}
    for m in rules["masks"]:
        assert m["cell"] in names and f"ETCH{m['etch_depth_m'] * 1e9:.1f}NM".replace(".", "p") in m["cell"]


def test_levels_are_the_training_quantizer_and_masks_sum_to_heights(fresnel_export: Path) -> None:
    run = fresnel_export
    out = run / "export"
    rules = json.loads((out / "tiny.rules.json").read_text())
    d = RunDir(run).load_design()
    levels, _, _ = read_tiff(out / "tiny.levels.tiff")
    heights, pitch, desc = read_tiff(out / "tiny.height.tiff")
    assert heights.dtype == np.float32 and abs(pitch - 4e-6) < 1e-15
    assert desc["levels"] == 8 and desc["material"] == "fused_silica" and desc["design_wavelength_m"] == 550e-9
    inside = aperture_mask(levels.shape[0], 4e-6, 0.5e-3).numpy().astype(bool)
    q = np.asarray(level_index(d.height_m, d.max_height_m, 8))
    assert np.array_equal(levels[inside], q[inside]) and not levels[~inside].any()
    # summing the etch depths of the masks covering each pixel gives the quantized height map
    total = np.zeros(levels.shape)
    for m in rules["masks"]:
        total += m["etch_depth_m"] * ((levels >> m["bit"]) & 1)
    hq = np.asarray(quantize(d.height_m, d.max_height_m, 8))
    assert np.array_equal(total[inside], hq[inside])
    assert np.array_equal(total.astype(np.float32), heights)
    assert [m["etch_depth_m"] for m in rules["masks"]] == [d.max_height_m * 2**j / 8 for j in range(3)]


def test_stl_fields_are_watertight_with_the_right_volume(fresnel_export: Path) -> None:
    out = fresnel_export / "export"
    rules = json.loads((out / "tiny.rules.json").read_text())
    levels, _, _ = read_tiff(out / "tiny.levels.tiff")
    fields = rules["stl"]["fields"]
    assert len(fields) == 4  # 126 px at 4 um in 300 um fields: 2 × 2 of 63 px
    base_um = rules["stl"]["base_m"] * 1e6
    step_um = rules["level_height_m"] * 1e6
    covered = np.zeros(levels.shape, dtype=int)
    for f in fields:
        header, tris, normals = read_stl(out / f["file"])
        assert not header.lower().startswith("solid")
        vol = assert_watertight(tris)
        (r0, r1), (c0, c1) = f["rows"], f["cols"]
        covered[r0:r1, c0:c1] += 1
        expected = ((base_um + levels[r0:r1, c0:c1] * step_um).sum()) * 4.0**2
        assert abs(vol - expected) <= 1e-6 * expected
        # stored normals point outwards (agree with the winding)
        geo = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
        assert (np.einsum("ij,ij->i", geo, normals) > 0).all()
        x0, y0 = f["origin_um"]
        assert abs(tris[..., 0].min() - x0) < 1e-3 and abs(tris[..., 1].min() - y0) < 1e-3
    assert (covered == 1).all()


def test_misalignment_and_staircase_reported(fresnel_export: Path) -> None:
    rules = json.loads((fresnel_export / "export" / "tiny.rules.json").read_text())
    assert rules["staircase_efficiency"] == pytest.approx(staircase_efficiency(8))
    mis = rules["misalignment"]
    assert mis["misalignment_m"] == pytest.approx(2e-6)  # from fabrication.misalignment
    assert 0.0 < mis["all_masks_core_energy_kept"] < 1.0
    assert all(0.0 < m["core_energy_kept"] < 1.0 for m in mis["per_mask"])
    assert rules["violations"] == []


# ---- radial designs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ring_width", [4e-6, 6e-6])
def test_radial_rings_rebuild_levels_exactly(tmp_path: Path, ring_width: float) -> None:
    from lensdesign.fabrication.export import ExportOptions, export_run

    run = make_radial_run(tmp_path / "run", ring_width)
    res = export_run(run, ExportOptions(tiff=True, gds=True))
    levels, _, _ = read_tiff(res.out / f"{res.name}.levels.tiff")
    n = levels.shape[0]
    shapes = klayout_masks(res.out / f"{res.name}.gds", n, 4000)
    for j in range(3):
        m = shapes[(j + 1, 0)]
        assert m.any()
        assert int((m != ((levels >> j) & 1).astype(bool)).sum()) == 0
    rings = res.rules["rings"]
    assert rings["rings"] == math.ceil(0.125e-3 / ring_width)
    # the rasterized rings agree with the design's own pixel map except where a pixel centre lies within the arc
    # tolerance (10 nm) of a ring edge, e.g. exactly on it: 20² + 21² = 29², which floating point puts on either side
    d = RunDir(run).load_design()
    ref = np.where(levels > 0, np.asarray(level_index(d.height_m, d.max_height_m, 8)), levels)
    ii, jj = np.nonzero(ref != levels)
    r_nm = np.hypot(ii - n // 2, jj - n // 2) * 4000
    w_nm = ring_width * 1e9
    assert np.all(np.abs(r_nm - np.rint(r_nm / w_nm) * w_nm) < 10.0 + 2.0)
    assert rings["pixels_differing_from_design_map"] == len(ii)
    assert all(m["max_vertices_per_polygon"] <= 4094 for m in res.rules["masks"])
    assert res.rules["parameterization"] == "radial"


def test_ring_polygons_put_no_pixel_centre_on_an_edge() -> None:
    # radius exactly on pixel centres (axis points) and a large ring split into sectors
    lay = ring_layout(2e-6, 1.0e-3, 2e-6, 500)
    assert lay.rings == 250
    for b in lay.boundaries[::50]:
        k = (np.arange(-250, 250) * 2000).astype(np.int64)
        xx, yy = np.meshgrid(k, k)
        side = classify(b, xx.ravel(), yy.ravel())
        assert (side != 0).all()
        r = np.hypot(xx.ravel(), yy.ravel())
        # ring boundaries follow [j·w, (j+1)·w): a centre exactly on the circle is outside
        on = np.isclose(r, b.radius_nm, rtol=0, atol=1e-6)
        if b is not lay.boundaries[-1]:
            assert (side[on] < 0).all()
    c = circle_polygon(2.5e6, 1.0)
    assert c.n > 3000 and np.all(np.hypot(*c.vertices.T.astype(float)) < 2.5e6)


def test_radial_export_from_cli_grayscale_with_lut(tmp_path: Path, cli) -> None:
    run = make_radial_run(tmp_path / "run", 6e-6, process="grayscale", levels=12)
    lut = tmp_path / "dose.csv"
    lut.write_text("height_nm,grey\n0,250\n700,120\n1300,10\n")
    r = cli("export", run, "--tiff", "--gds", "--lut", lut)
    assert r.returncode == 0, r.stderr
    out = run / "export"
    levels, _, _ = read_tiff(out / "tiny.levels.tiff")
    grey, _, desc = read_tiff(out / "tiny.grey.tiff")
    assert desc["grey_per_level"][0] == 250
    rules = json.loads((out / "tiny.rules.json").read_text())
    step_nm = rules["level_height_m"] * 1e9
    table = np.rint(np.interp(np.arange(12) * step_nm, [0, 700, 1300], [250, 120, 10])).astype(np.uint8)
    assert grey.dtype == np.uint8 and np.array_equal(grey, table[levels])
    shapes = klayout_masks(out / "tiny.gds", levels.shape[0], 4000)
    rebuilt = np.zeros(levels.shape, dtype=np.int64)
    for (layer, dt), m in shapes.items():
        if layer == 1:
            assert not (rebuilt[m] != 0).any()  # datatypes do not overlap
            rebuilt[m] = dt
    assert np.array_equal(rebuilt, levels) and len(np.unique(levels)) > 6


# ---- CLI behaviour ---------------------------------------------------------------------------------------------


def test_cubic_baseline_exports_and_refuses_to_overwrite(tmp_path: Path, tiny_spec: Path, cli) -> None:
    run = tmp_path / "cubic"
    assert cli("baseline", tiny_spec, "--kind", "cubic", "--out", run).returncode == 0
    r = cli("export", run, "--tiff", "--gds")
    assert r.returncode == 0, r.stderr
    gds = run / "export" / "tiny.gds"
    before = gds.stat().st_mtime_ns
    r = cli("export", run, "--tiff", "--gds")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--force" in lines[0]
    assert gds.stat().st_mtime_ns == before
    r = cli("export", run, "--gds", "--force", "--levels", "4", "--out", tmp_path / "x")
    assert r.returncode == 0, r.stderr
    rules = json.loads((tmp_path / "x" / "tiny.rules.json").read_text())
    assert rules["levels"] == 4 and len(rules["masks"]) == 2
    assert not list((tmp_path / "x").glob(".*.tmp"))


@pytest.mark.parametrize(("args", "word"), [
    (["--levels", "12"], "--levels"),
    (["--stl", "--field", "500 parsecs"], "--field"),
    (["--process", "laser"], "--process"),
])
def test_user_errors_are_one_line_exit_2(fresnel_export: Path, tmp_path: Path, cli, args: list[str], word: str) -> None:
    r = cli("export", fresnel_export, "--out", tmp_path / "x", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("args", "kwargs", "argument"), [
    (["--tone", "negative"], {"tone": "negative"}, "tone"),
    (["--gds", "--process", "grayscale", "--levels", "8", "--tone", "dark"],
     {"gds": True, "process": "grayscale", "levels": 8, "tone": "dark"}, "tone"),
    (["--tiff", "--lut", "no-such-dose-curve.csv"], {"tiff": True, "lut": Path("no-such-dose-curve.csv")}, "lut"),
    (["--stl", "--field", "1um"], {"stl": True, "field_m": 1e-6}, "field_m"),
])
def test_library_errors_name_arguments_and_the_command_its_flags(fresnel_export: Path, tmp_path: Path,
                                                                  args: list[str], kwargs: dict, argument: str) -> None:
    from lensdesign.commands.export import FLAGS
    from lensdesign.errors import ArgumentError
    from lensdesign.fabrication.export import ExportOptions, export_run
    from tests.inproc import run_main

    with pytest.raises(ArgumentError) as e:  # the library names the ExportOptions argument ...
        export_run(fresnel_export, ExportOptions(out=tmp_path / "x", **kwargs))
    assert str(e.value).startswith(f"{argument}: ") and "--" not in str(e.value)
    r = run_main("export", fresnel_export, "--out", tmp_path / "x", *args)  # ... the command its flag
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {FLAGS[argument]}: ") and FLAGS[argument] in args
    assert not (tmp_path / "x").exists()


def test_missing_run_dir_and_strict_violations(tmp_path: Path, tiny_spec_dict: dict, cli) -> None:
    r = cli("export", tmp_path / "nope")
    assert r.returncode == 2 and "no such run directory" in r.stderr
    tiny_spec_dict["fabrication"]["min_feature"] = "10 um"  # the 4 um pixels of the Fresnel zones violate it
    spec = write_spec(tmp_path, tiny_spec_dict)
    run = tmp_path / "run"
    assert cli("baseline", spec, "--out", run).returncode == 0
    r = cli("export", run, "--gds", "--strict")
    assert r.returncode == 1
    assert "violation" in r.stdout and "smallest feature" in r.stdout
    rules = json.loads((run / "export" / "tiny.rules.json").read_text())
    assert rules["violations"] and rules["masks"][0]["features_below_min"] > 0


def test_two_photon_defaults_to_tiff_and_stl_and_lut_errors_write_nothing(tmp_path: Path) -> None:
    from lensdesign.errors import LensdesignError
    from lensdesign.fabrication.export import ExportOptions, export_run

    run = make_radial_run(tmp_path / "run", 6e-6, process="two_photon", levels=16)
    lut = tmp_path / "short.csv"
    lut.write_text("0,0\n500,255\n")  # does not reach the top level
    with pytest.raises(LensdesignError, match=r"^lut: "):  # the argument; the command names its flag --lut
        export_run(run, ExportOptions(tiff=True, lut=lut))
    assert not (run / "export").exists()
    res = export_run(run, ExportOptions(field_m=150e-6))
    names = set(res.files)
    assert {"tiny.height.tiff", "tiny.levels.tiff", "tiny.rules.json"} <= names and "tiny.gds" not in names
    assert sum(n.endswith(".stl") for n in names) == 4  # 64 px at 4 um in 150 um fields: 2 × 2
    assert "not applicable" in res.rules["misalignment"]["note"]
    assert res.rules["plateaus"]["min_feature_m"] >= 4e-6


# ---- mask tone --------------------------------------------------------------------------------------------------


def klayout_regions(path: Path) -> tuple[kdb.Layout, dict[tuple[int, int], kdb.Region]]:
    """Every (layer, datatype) of a layout as a merged KLayout region (the layout is returned to keep it alive)."""
    layout = kdb.Layout()
    layout.read(str(path))
    top = layout.top_cell()
    regions = {}
    for li in layout.layer_indexes():
        info = layout.get_info(li)
        regions[(info.layer, info.datatype)] = kdb.Region(top.begin_shapes_rec(li)).merged()
    return layout, regions


def twice_area(p: np.ndarray) -> int:
    """Twice the signed area of an integer polygon (exact)."""
    x, y = p[:, 0].astype(object), p[:, 1].astype(object)
    return int(sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def test_dark_tone_masks_are_the_complements_on_the_pixel_grid(fresnel_export: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "dark"
    r = cli("export", fresnel_export, "--gds", "--oasis", "--tone", "dark", "--misalignment", "0", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "dark-field" in r.stdout
    levels, _, _ = read_tiff(fresnel_export / "export" / "tiny.levels.tiff")
    n = levels.shape[0]
    for path in (out / "tiny.gds", out / "tiny.oas"):
        shapes = klayout_masks(path, n, 4000)
        for j in range(3):
            kept = ((levels >> j) & 1).astype(bool)
            assert int((shapes[(j + 1, 0)] != ~kept).sum()) == 0
    clear = json.loads((fresnel_export / "export" / "tiny.rules.json").read_text())
    dark = json.loads((out / "tiny.rules.json").read_text())
    assert (clear["tone"], dark["tone"]) == ("clear", "dark")
    assert "dark-field" in dark["conventions"]["tone"] and "clear-field" in clear["conventions"]["tone"]
    assert dark["conventions"]["masks"] != clear["conventions"]["masks"]
    # the relief does not depend on the tone: the same features, gaps and fills
    for a, b in zip(clear["masks"], dark["masks"], strict=True):
        for key in ("cell", "etch_depth_m", "fill_factor", "min_feature_m", "min_gap_m", "features_below_min"):
            assert a[key] == b[key]


def test_dark_tone_rings_and_clear_tone_tile_the_die_square(tmp_path: Path) -> None:
    from lensdesign.fabrication.export import ExportOptions, export_run

    run = make_radial_run(tmp_path / "run", 4e-6)
    clear = export_run(run, ExportOptions(tiff=True, gds=True))
    dark = export_run(run, ExportOptions(gds=True, tone="dark", out=tmp_path / "dark"))
    levels, _, _ = read_tiff(clear.out / "tiny.levels.tiff")
    n = levels.shape[0]
    shapes = klayout_masks(dark.out / "tiny.gds", n, 4000)
    _keep_c, rc = klayout_regions(clear.out / "tiny.gds")
    _keep_d, rd = klayout_regions(dark.out / "tiny.gds")
    half = (n // 2) * 4000 + 2000  # die square: (N//2 + 1/2) pitch around the axis, in nm
    die = kdb.Region(kdb.Box(-half, -half, half, half))
    for j in range(3):
        assert int((shapes[(j + 1, 0)] != ~((levels >> j) & 1).astype(bool)).sum()) == 0
        a, b = rc[(j + 1, 0)] & die, rd[(j + 1, 0)] & die  # the alignment marks lie outside the die
        assert (a & b).area() == 0 and ((a + b).merged() ^ die).is_empty()
    assert all(m["max_vertices_per_polygon"] <= 4094 for m in dark.rules["masks"])


def test_square_frame_polygons_cover_the_square_minus_the_aperture_exactly() -> None:
    from lensdesign.fabrication.rings import square_frame_polygons, tie_free_circle

    n, pitch, half = 64, 4000, 130000
    circ = tie_free_circle(125e3, 10, pitch, n, closed=True)
    polys = square_frame_polygons(circ, half, pitch, max_vertices=40)
    assert len(polys) > 4 and max(len(p) for p in polys) <= 40
    assert all(twice_area(p) > 0 for p in polys)  # counter-clockwise, none degenerate
    assert sum(twice_area(p) for p in polys) == 2 * (2 * half) ** 2 - twice_area(circ.vertices)
    # pixel centres: the frame holds exactly those outside the aperture polygon (and none lies on a cut)
    frame = raster_contours([[p] for p in polys], n, pitch)
    k = (np.arange(n) - n // 2) * pitch
    xx, yy = np.meshgrid(k, k)
    outside = (classify(circ, xx.ravel(), yy.ravel()) < 0).reshape(n, n)
    assert np.array_equal(frame, outside) and outside.any()


# ---- units ------------------------------------------------------------------------------------------------------


def test_tiles_split_polygons_over_the_vertex_limit() -> None:
    mask = np.ones((64, 64), dtype=np.int8)
    mask[1:-1:2, 1:-1:2] = 0  # 961 holes: one polygon would need thousands of vertices
    out = label_polygons(mask, 2e-6, max_vertices=40)
    pts, counts = out[1]
    assert counts.max() <= 40
    polys, off = [], 0
    for c in counts:
        polys.append([np.rint(pts[off:off + c] * 1000).astype(np.int64)])
        off += c
    assert np.array_equal(raster_contours(polys, 64, 2000), mask.astype(bool))


def test_checkerboard_mesh_is_manifold_and_exact() -> None:
    codes = (np.indices((9, 7)).sum(axis=0) % 2) * 3 + 1 + np.random.default_rng(0).integers(0, 2, (9, 7))
    tris = field_mesh(codes).astype(np.float64)
    vol = assert_watertight(tris)
    assert vol == pytest.approx(codes.sum() * 16 * 16, rel=1e-12)  # x, y in 1/16 pixel, z in codes


def test_run_lengths_and_shifted_coverage() -> None:
    m = np.zeros((5, 12), dtype=bool)
    m[2, 2:5] = m[2, 7:8] = True  # features 3 and 1, gap 2
    runs = run_lengths(m, limit_px=2)
    # below 2 px: the 1-px run along its row, and the four 1-px-tall column runs of both features
    assert (runs.min_feature_px, runs.min_gap_px, runs.features_below, runs.gaps_below) == (1, 2, 5, 0)
    c = shifted_coverage(m, 0.0, 0.25)
    assert c[2, 2] == pytest.approx(0.75) and c[2, 5] == pytest.approx(0.25) and c.sum() == pytest.approx(m.sum())


def test_focus_model_matches_the_psf_stack(tiny_spec_dict: dict) -> None:
    spec = parse_spec(tiny_spec_dict)
    fm = FocusModel(spec)
    h = torch.rand(fm.system.grid.n, fm.system.grid.n, dtype=torch.float64) * spec.max_height_m
    ref = fm.system.psf(h.float())[0, 0].numpy()
    mine = fm.psf(np.exp(1j * fm.phase_per_m * h.numpy()))
    assert np.allclose(mine, ref, rtol=1e-4, atol=1e-7 * ref.max())
    full = OpticalSystem(spec, depths=[spec.focus_depth_m], psf_size=fm.system.grid.psf_size, bin_override=1)
    i = spec.wavelengths.index(spec.design_wavelength_m)
    assert np.allclose(full.psf(h.float())[0, i].numpy(), ref, rtol=1e-4, atol=1e-7 * ref.max())
