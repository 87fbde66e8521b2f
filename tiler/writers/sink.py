"""Sinks: one dataset written frame by frame (a survey's), so no more than one frame's features are held.

`open_sink(path, ...)` -> `write(dets, names, geo, provenance)` per frame -> `commit()` (or `abort()`). As for
a single raster, the output appears only on commit (a temporary file beside it is renamed), and its format
comes from its suffix:

* GeoJSON and GeoJSON text sequences stream straight to the file;
* GeoParquet: one row group per frame through pyarrow's ParquetWriter; the `geo` metadata (geometry types
  and bbox of the whole dataset) goes into the footer at commit;
* GeoPackage and FlatGeobuf: each frame's table is appended to an Arrow IPC spool beside the output, and on
  commit GDAL reads the spool as a stream (one layer of one geometry type, and FlatGeobuf's spatial index
  needs every feature before it writes the first).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..detections import Detections
from ..georef import Georeferencer
from .base import GEOJSON_FORMATS, PIXEL_SPACE_NOTE, check_output_path, output_crs, output_format
from .features import FeatureSet


def open_sink(path: str | os.PathLike, crs: str, native, meta: dict | None = None) -> "Sink":
    """A sink for `path` (format by suffix) writing in the CRS `crs` asks for (`native`: the survey's own CRS,
    None for pixel space)."""
    path = check_output_path(path, crs)
    fmt = output_format(path)
    cls = {"geoparquet": ParquetSink}.get(fmt, GeoJSONSink if fmt in GEOJSON_FORMATS else OgrSink)
    return cls(path, fmt, output_crs(fmt, crs, native), dict(meta or {}))


class Sink:
    def __init__(self, path: Path, fmt: str, crs, meta: dict):
        self.path, self.fmt, self.crs, self.meta = Path(path), fmt, crs, meta
        if crs is None:
            self.meta.update(coordinate_space="pixel", coordinate_space_note=PIXEL_SPACE_NOTE)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.part{self.path.suffix}")
        self.count = 0

    def write(self, dets: Detections, names: dict[int, str], geo: Georeferencer | None,
              provenance: dict | None) -> None:
        fs = FeatureSet.build(dets, names, geo, self.crs if geo is not None else None, provenance)
        self._write(fs)
        self.count += len(fs)

    def _write(self, fs: FeatureSet) -> None:
        raise NotImplementedError

    def commit(self) -> Path:
        self._close()
        os.replace(self.tmp, self.path)
        self._cleanup()
        return self.path

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001  (the error that made us abort is the one to report)
            pass
        self._cleanup()

    def _close(self) -> None:
        pass

    def _cleanup(self) -> None:
        for p in (self.tmp, *(self.tmp.with_name(self.tmp.name + s) for s in ("-journal", "-wal", "-shm"))):
            if p.exists():
                p.unlink()


class GeoJSONSink(Sink):
    def __init__(self, *args):
        from .geojson import collection_head

        super().__init__(*args)
        self.f = open(self.tmp, "wb")
        self.seq = self.fmt == "geojsonseq"
        self.separator = b"\n"
        if not self.seq:
            self.f.write(collection_head(self.crs, self.meta))

    def _write(self, fs: FeatureSet) -> None:
        from .geojson import encoded_features

        for feat in encoded_features(fs):
            if self.seq:
                self.f.write(b"\x1e" + feat + b"\n")  # RFC 8142 record separator
            else:
                self.f.write(self.separator + feat)
                self.separator = b",\n"

    def _close(self) -> None:
        if not self.f.closed:
            if not self.seq:
                self.f.write(b"\n]}\n")
            self.f.close()


class ParquetSink(Sink):
    def __init__(self, *args):
        super().__init__(*args)
        self.writer = None
        self.types: set[str] = set()
        self.bbox = None

    def _write(self, fs: FeatureSet) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        from .arrow import encode_geometries, feature_table

        enc = encode_geometries(fs, multi=False)
        table = feature_table(fs, enc, bbox_column=True)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="snappy")
        self.writer.write_table(table, row_group_size=64 * 1024)
        self.types.update(enc.types)
        if len(enc.bounds):
            b = np.array([enc.bounds[:, 0].min(), enc.bounds[:, 1].min(), enc.bounds[:, 2].max(),
                          enc.bounds[:, 3].max()])
            self.bbox = b if self.bbox is None else np.concatenate([np.minimum(self.bbox[:2], b[:2]),
                                                                   np.maximum(self.bbox[2:], b[2:])])

    def _close(self) -> None:
        from .geoparquet import geo_metadata_for

        if self.writer is None:  # nothing was written: an empty dataset still has its columns
            self._write(FeatureSet.build(Detections.empty(), {}, None, None, None))
        geo = geo_metadata_for(self.crs, sorted(self.types), self.bbox)
        self.writer.add_key_value_metadata({"geo": json.dumps(geo), "tiler": json.dumps(self.meta)})
        self.writer.close()


class OgrSink(Sink):
    def __init__(self, *args):
        super().__init__(*args)
        self.spool = self.tmp.with_name(self.tmp.name + ".arrows")
        self.writer = None
        self.multi = False

    def _write(self, fs: FeatureSet) -> None:
        import pyarrow as pa

        from .arrow import encode_geometries, feature_table

        enc = encode_geometries(fs, multi=False)
        self.multi |= "MultiPolygon" in enc.types
        table = feature_table(fs, enc)
        if self.writer is None:
            self.writer = pa.ipc.new_file(str(self.spool), table.schema)
        self.writer.write_table(table)

    def _close(self) -> None:
        import pyarrow as pa
        import shapely

        from .ogr import write_layer

        if self.writer is None:
            self._write(FeatureSet.build(Detections.empty(), {}, None, None, None))
        self.writer.close()
        self.writer = None
        multi = self.multi

        def batches(reader):
            for k in range(reader.num_record_batches):
                batch = reader.get_batch(k)
                if multi:  # one layer type: Polygons become one-part MultiPolygons
                    geoms = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
                    single = shapely.get_type_id(geoms) == 3
                    if single.any():
                        geoms[single] = shapely.multipolygons(geoms[single][:, None])
                    i = batch.schema.get_field_index("geometry")
                    batch = batch.set_column(i, "geometry", pa.array(shapely.to_wkb(geoms), pa.binary()))
                yield batch

        with pa.memory_map(str(self.spool)) as src:
            reader = pa.ipc.open_file(src)
            write_layer(pa.RecordBatchReader.from_batches(reader.schema, batches(reader)), self.tmp, self.fmt,
                        "MultiPolygon" if multi else "Polygon", self.crs, self.meta)

    def _cleanup(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        super()._cleanup()
        if self.spool.exists():
            self.spool.unlink()
