"""The area grid and preparation on real Sentinel-2 data: OSCD per-band files, a SAFE zip, the Buenos
Aires crop; two dates land on the identical grid with the right georeferencing; bad input fails clearly."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.warp import reproject as warp
from rasterio.warp import transform_bounds
from shapely.geometry import box, shape

from monitor.errors import ImageryError
from monitor.geo import reproject, utm_epsg_for
from monitor.imagery.base import Band, Product
from monitor.imagery.grid import area_grid
from monitor.imagery.prepare import clear_path_for, prepare, raster_bands, safe_product

BANDS = ["B02", "B03", "B04", "B08"]


# --- the grid ------------------------------------------------------------------------------------

def test_grid_is_snapped_and_covers_area_and_margin():
    area = reproject(box(314003.7, 6183401.2, 316017.1, 6184988.9), 32721, 4326)
    g = area_grid(area, 32721, 10, 100)
    assert g.crs == 32721 and g.resolution == 10
    assert g.transform.c % 10 == 0 and g.transform.f % 10 == 0
    left, bottom, right, top = g.bounds
    a = reproject(area, 4326, 32721).bounds
    assert left <= a[0] - 100 < left + 10 and right - 10 < a[2] + 100 <= right
    assert bottom <= a[1] - 100 < bottom + 10 and top - 10 < a[3] + 100 <= top
    assert (g.width, g.height) == (round((right - left) / 10), round((top - bottom) / 10))
    # the same area always gives the same grid; another area shares its lattice
    assert area_grid(area, 32721, 10, 100) == g
    other = area_grid(reproject(box(313501.2, 6183000.4, 314499.9, 6183999), 32721, 4326), 32721, 10, 100)
    assert (other.transform.c - g.transform.c) % 10 == 0 and (other.transform.f - g.transform.f) % 10 == 0
    with pytest.raises(ValueError):
        area_grid(area, 32721, 0, 100)


# --- reading results ---------------------------------------------------------------------------------

def oscd_bands(city_dir: Path, which: str, bands) -> dict[str, Path]:
    files = sorted((city_dir / which).glob("*.tif"))
    return {b: next(f for f in files if f.stem.endswith("_" + b)) for b in bands}


def city_area(city_dir: Path):
    doc = json.loads(next(city_dir.glob("*.geojson")).read_text())
    return shapely.union_all([shape(f["geometry"]) for f in doc["features"]])


def data_bounds(path: Path):
    """Bounds (grid CRS) of the pixels holding data."""
    with rasterio.open(path) as ds:
        valid = ds.read(1) != 0
        rows, cols = np.nonzero(valid)
        t = ds.transform
        return (t.c + cols.min() * t.a, t.f + (rows.max() + 1) * t.e, t.c + (cols.max() + 1) * t.a,
                t.f + rows.min() * t.e)


def agreement(prepared: Path, band: int, source: Path, source_band: int = 1, n: int = 3000) -> float:
    """Correlation between prepared pixels and the source pixels under their centres (nearest)."""
    rng = np.random.default_rng(0)
    with rasterio.open(prepared) as ds, rasterio.open(source) as src:
        img = ds.read(band).astype(float)
        rows, cols = np.nonzero(img > 0)
        pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
        rows, cols = rows[pick], cols[pick]
        xs, ys = rasterio.transform.xy(ds.transform, rows, cols)
        lon, lat = rasterio.warp.transform(ds.crs, src.crs, xs, ys)
        r, c = rasterio.transform.rowcol(src.transform, lon, lat)
        r, c = np.asarray(r), np.asarray(c)
        ok = (r >= 0) & (r < src.height) & (c >= 0) & (c < src.width)
        ref = src.read(source_band).astype(float)[r[ok], c[ok]]
        return float(np.corrcoef(img[rows[ok], cols[ok]], ref)[0, 1])


# --- real Sentinel-2: OSCD per-band files, as a SAFE zip -----------------------------------------

@pytest.mark.realdata
def test_oscd_two_dates_on_one_grid(shared_data, tmp_path):
    city = shared_data / "oscd" / "images" / "paris"
    area = city_area(city)  # the crop's own extent; the margin lies outside the data
    epsg = utm_epsg_for(area)
    grid = area_grid(area, epsg, 10, 300)
    outs = []
    for which, name in (("imgs_1", "d1.tif"), ("imgs_2", "d2.tif")):
        files = oscd_bands(city, which, [*BANDS, "B05"])
        product = Product([Band(b, [str(p)]) for b, p in files.items()], zero_is_nodata=True)
        outs.append(prepare(product, grid, area, tmp_path / name))
    a, b = outs
    with rasterio.open(a.path) as da, rasterio.open(b.path) as db:
        assert da.crs.to_epsg() == db.crs.to_epsg() == epsg == 32631
        assert da.transform == db.transform == grid.transform and da.shape == db.shape == grid.shape
        assert da.descriptions == (*BANDS, "B05") and da.dtypes == ("uint16",) * 5
        assert da.overviews(1) == [] or da.profile["tiled"]
        # the 20 m band comes out at 10 m like the others, valid wherever they are
        assert ((da.read(5) > 0) == (da.read(1) > 0)).mean() > 0.99
    # georeferencing: the data sits where the source says, pixel for pixel
    with rasterio.open(oscd_bands(city, "imgs_1", ["B02"])["B02"]) as src:
        src_utm = transform_bounds(src.crs, f"EPSG:{epsg}", *src.bounds)
    got = data_bounds(a.path)
    assert all(abs(g - s) <= 20 for g, s in zip(got, src_utm)), (got, src_utm)
    assert agreement(a.path, 3, oscd_bands(city, "imgs_1", ["B04"])["B04"]) > 0.9
    assert agreement(b.path, 3, oscd_bands(city, "imgs_2", ["B04"])["B04"]) > 0.9
    # no clouds are marked in these L1C crops (no SCL, no nodata inside): the area is clear
    assert a.cloud_cover < 1 and b.cloud_cover < 1 and a.clear_geom.area > 0.98 * area.area
    with rasterio.open(a.path) as da:
        assert (da.read(1) == 0).sum() > 0  # the margin beyond the crop is nodata


def write_safe(zip_path: Path, city: Path, which: str, tile: str = "T31UDQ", level: str = "L1C") -> Path:
    """A SAFE zip holding OSCD's real pixels as JP2, on a UTM grid, in the Sentinel-2 layout."""
    files = oscd_bands(city, which, [*BANDS, "B05"])
    stamp = "20161130T105402"
    root = f"S2A_MSI{level}_{stamp}_N0204_R051_{tile}_{stamp}.SAFE"
    granule = f"{root}/GRANULE/{level}_{tile}_A007527_{stamp}/IMG_DATA"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/manifest.safe", "<xfdu/>")
        for band, src_path in files.items():
            res = 20 if band == "B05" else 10
            with rasterio.open(src_path) as src:
                left, bottom, right, top = transform_bounds(src.crs, "EPSG:32631", *src.bounds)
                w, h = int((right - left) // res), int((top - bottom) // res)
                t = Affine(res, 0, left - left % res, 0, -res, top - top % res)
                arr = np.zeros((h, w), dtype="uint16")
                warp(src.read(1), arr, src_transform=src.transform, src_crs=src.crs, dst_transform=t,
                     dst_crs="EPSG:32631")
            jp2 = zip_path.parent / f"{band}.jp2"
            with rasterio.open(jp2, "w", driver="JP2OpenJPEG", width=w, height=h, count=1, dtype="uint16",
                               crs="EPSG:32631", transform=t, QUALITY=100, REVERSIBLE="YES") as ds:
                ds.write(arr, 1)
            if level == "L2A":
                zf.write(jp2, f"{granule}/R{res}m/{tile}_{stamp}_{band}_{res}m.jp2")
                if res == 10:  # L2A also carries every 10 m band resampled at 20 m
                    zf.write(jp2, f"{granule}/R20m/{tile}_{stamp}_{band}_20m.jp2")
            else:
                zf.write(jp2, f"{granule}/{tile}_{stamp}_{band}.jp2")
            jp2.unlink()
    return zip_path


@pytest.mark.realdata
@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_safe_zip(shared_data, tmp_path, level):
    city = shared_data / "oscd" / "images" / "paris"
    z = write_safe(tmp_path / "product.zip", city, "imgs_1", level=level)
    product = safe_product(z, [*BANDS, "B05"])
    assert [b.name for b in product.bands] == [*BANDS, "B05"] and product.scl is None
    assert all(b.paths[0].startswith("/vsizip/") for b in product.bands)
    if level == "L2A":  # the finest resolution of each band is the one used
        assert product.bands[0].paths[0].endswith("B02_10m.jp2") and product.bands[4].paths[0].endswith("_20m.jp2")
    area = city_area(city).buffer(-0.003)
    grid = area_grid(area, 32631, 10, 50)
    out = prepare(product, grid, area, tmp_path / "safe.tif")
    assert agreement(out.path, 3, oscd_bands(city, "imgs_1", ["B04"])["B04"]) > 0.9
    with pytest.raises(ImageryError, match="holds no Sentinel-2 band B11"):
        safe_product(z, ["B02", "B11"])


def test_corrupt_and_truncated_zips(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)
    with pytest.raises(ImageryError, match="junk.zip is not a readable zip archive"):
        safe_product(junk, BANDS)
    # a real zip cut short loses its central directory
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("S2A.SAFE/GRANULE/G/IMG_DATA/T_B02.jp2", b"\x00" * 50_000)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:20_000])
    with pytest.raises(ImageryError, match="not a readable zip"):
        safe_product(cut, BANDS)


@pytest.mark.realdata
def test_damaged_band_inside_a_zip(shared_data, tmp_path):
    z = write_safe(tmp_path / "product.zip", shared_data / "oscd" / "images" / "paris", "imgs_1")
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("_B03.jp2"))
    start = info.header_offset + 30 + len(info.filename)
    data[start:start + info.compress_size] = b"\x00" * info.compress_size  # zero the whole JP2 stream
    z.write_bytes(bytes(data))
    product = safe_product(z, BANDS)
    area = box(2.32, 48.81, 2.34, 48.83)
    with pytest.raises(ImageryError, match=r"cannot read T31UDQ_\w+_B03.jp2"):
        prepare(product, area_grid(area, 32631, 10, 0), area, tmp_path / "x.tif")
    assert not list(tmp_path.glob("x*"))


# --- the real Buenos Aires crop (bands 1-3) ------------------------------------------------------

@pytest.mark.realdata
def test_buenos_aires_before_after(shared_data, tmp_path):
    src_dir = shared_data / "buenos_aires_lots"
    with rasterio.open(src_dir / "before.tif") as ds:
        b = ds.bounds
    # the area lies 200 m inside the raster; with a 300 m margin the grid reaches beyond it
    area = reproject(box(b.left + 200, b.bottom + 200, b.right - 200, b.top - 200), 32721, 4326)
    grid = area_grid(area, 32721, 10, 300)
    outs = {}
    for name in ("before", "after"):
        bands = [Band(None, [str(src_dir / f"{name}.tif")], i) for i in (1, 2, 3)]
        outs[name] = prepare(Product(bands, zero_is_nodata=False), grid, area, tmp_path / f"{name}.tif")
    with rasterio.open(outs["before"].path) as x, rasterio.open(outs["after"].path) as y:
        assert x.transform == y.transform and x.shape == y.shape and x.crs.to_epsg() == 32721
        assert x.count == 3 and x.descriptions == (None, None, None)
    # the data region matches the source bounds (within a pixel of the 10.001 m x 9.998 m source)
    got = data_bounds(outs["before"].path)
    assert all(abs(g - s) <= 12 for g, s in zip(got, (b.left, b.bottom, b.right, b.top))), (got, b)
    for name in ("before", "after"):
        assert agreement(outs[name].path, 1, src_dir / f"{name}.tif") > 0.95
    # the area lies inside the raster: nothing of it is cloud or nodata
    assert outs["before"].cloud_cover == 0 and outs["after"].cloud_cover == 0
    with rasterio.open(clear_path_for(outs["before"].path)) as m:
        assert m.read(1).sum() * 100 == pytest.approx(reproject(area, 4326, 32721).area, rel=0.02)
    # the local provider's choice of bands: every band but the alpha band
    assert [x.index for x in raster_bands(src_dir / "before.tif", BANDS)] == [1, 2, 3, 4]


@pytest.mark.realdata
def test_very_high_resolution_is_averaged(shared_data, tmp_path):
    """The 0.5 m WorldView tile at 5 m: each output pixel is the mean of its 10 x 10 source pixels."""
    src_path = shared_data / "spacenet_atlanta" / "sample_geotiff.tif"
    with rasterio.open(src_path) as src:
        b, data = src.bounds, src.read(1).astype(float)
    area = reproject(box(b.left + 51, b.bottom + 51, b.right - 51, b.top - 51), 32616, 4326)
    grid = area_grid(area, 32616, 5, 0)
    out = prepare(Product(raster_bands(src_path, BANDS), zero_is_nodata=False), grid, area, tmp_path / "vhr.tif")
    with rasterio.open(out.path) as ds:
        assert ds.dtypes[0] == "uint16" and ds.res == (5.0, 5.0) and ds.count == 1
        img = ds.read(1).astype(float)
        t = ds.transform
    # grid pixel (r, c) covers source rows/cols from its own corner; the source has 0.5 m pixels
    r0, c0 = int(round((b.top - t.f) / 0.5)), int(round((t.c - b.left) / 0.5))
    means = data[r0:r0 + img.shape[0] * 10, c0:c0 + img.shape[1] * 10]
    h, w = means.shape[0] // 10, means.shape[1] // 10
    means = means[:h * 10, :w * 10].reshape(h, 10, w, 10).mean(axis=(1, 3))
    assert np.corrcoef(img[:h, :w].ravel(), means.ravel())[0, 1] > 0.98
    assert np.abs(img[:h, :w] - means).mean() < 0.05 * means.mean()


def test_raster_without_crs(tmp_path):
    f = tmp_path / "nocrs.tif"
    with rasterio.open(f, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8") as ds:
        ds.write(np.full((1, 20, 20), 7, dtype="uint8"))
    area = box(-58.5, -34.6, -58.49, -34.59)
    with pytest.raises(ImageryError, match="nocrs.tif has no CRS"):
        prepare(Product([Band(None, [str(f)])], zero_is_nodata=False), area_grid(area, 32721, 10, 0), area,
                tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


def test_rgb_bands_found_by_colour_interpretation(tmp_path):
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=4, dtype="uint8", crs="EPSG:3857",
                       transform=Affine(4.78, 0, 0, 0, -4.78, 0)) as d:
        d.write(np.arange(1, 5, dtype="uint8")[:, None, None] * np.ones((4, 8, 8), "uint8"))
        d.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    rgb = raster_bands(path, ["blue", "green", "red"])
    # named by their Sentinel-2 names, whether a model asks for common names or Sentinel-2 ones
    assert [(b.name, b.index) for b in rgb] == [("B02", 3), ("B03", 2), ("B04", 1)]
    assert [(b.name, b.index) for b in raster_bands(path, ["B02", "B03", "B04"])] == [(b.name, b.index) for b in rgb]
    # a model asking for a band the file does not have gets every band but alpha, with the names found
    assert [(b.name, b.index) for b in raster_bands(path, ["B08"])] == [("B04", 1), ("B03", 2), ("B02", 3)]
