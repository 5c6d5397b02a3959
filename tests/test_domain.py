"""The rules kept in monitor.domain, and where the other parts must agree with them: the database's
CHECK constraints, the CLI and the API."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from monitor.db.tables import Base
from monitor.domain import (
    AREA_PROVIDERS,
    MAX_CADENCE,
    MIN_CADENCE,
    AlertEvent,
    AlertStatus,
    AreaSpec,
    ChangeSource,
    Confidence,
    DeliveryStatus,
    DetectionKind,
    ModelKind,
    ModelMeta,
    Provider,
    RunStatus,
    SceneStatus,
    Verdict,
    parse_bbox,
    parse_cadence,
    values,
)
from monitor.errors import BadInput
from monitor.geo import utm_epsg


@pytest.mark.parametrize("text,box", [("-58.5,-34.7,-58.3,-34.5", (-58.5, -34.7, -58.3, -34.5)), ("", None),
                                      (None, None), ([0, 0, 1, 1], (0.0, 0.0, 1.0, 1.0))])
def test_bbox(text, box):
    assert parse_bbox(text) == box


@pytest.mark.parametrize("text", ["500,500,600,600", "1,2,3", "a,b,c,d", "2,0,1,1", "0,0,nan,1", "-181,0,0,1"])
def test_bbox_refused(text):
    with pytest.raises(BadInput, match="field 'bbox'"):
        parse_bbox(text)


def test_cadence_limits():
    assert parse_cadence("1m") == MIN_CADENCE and parse_cadence("366d") == MAX_CADENCE
    for text in ("0.5m", "367d", "5x", ""):
        with pytest.raises(BadInput, match="field 'cadence'"):
            parse_cadence(text)


def test_area_spec_checks_each_field():
    spec = AreaSpec.parse(" ba ", cadence="5d", providers="local,stac", max_cloud=20, sources=["local=/x"])
    assert spec.name == "ba" and spec.cadence == dt.timedelta(days=5)
    assert spec.providers == (Provider.LOCAL, Provider.STAC) and spec.sources == {"local": "/x"}
    for kwargs, field in [(dict(providers="local,import"), "provider"), (dict(providers="stac,stac"), "provider"),
                          (dict(max_cloud=101), "max-cloud"), (dict(sources=["nope=/x"]), "source"),
                          (dict(resolution_m=0), "resolution"), (dict(cadence="10s"), "cadence")]:
        args = dict(cadence="5d", providers="local", max_cloud=20) | kwargs
        with pytest.raises(BadInput, match=f"field '{field}'"):
            AreaSpec.parse("ba", **args)


def meta(**over):
    return {"kind": "segmenter", "version": "s-1", "bands": ["B02", "B03"], "tile": 64, "threshold": 0.5,
            "normalization": {"mean": [0, 0], "std": [1, 1]}, "training": {"epochs_run": 3}} | over


def test_model_meta_round_trip_and_checks(tmp_path):
    m = ModelMeta.from_dict(meta())
    assert m.kind is ModelKind.SEGMENTER and m.input_bands == ["B02", "B03"] and m.to_dict() == meta()
    change = ModelMeta.from_dict(meta(kind="change", normalization={"mean": [0] * 4, "std": [1] * 4}))
    assert change.input_bands == ["before:B02", "before:B03", "after:B02", "after:B03"]
    for bad, field in [(meta(kind="cnn"), "kind"), (meta(version=""), "version"), (meta(bands="B02"), "bands"),
                       (meta(normalization={"mean": [0], "std": [1]}), "normalization")]:
        with pytest.raises(BadInput, match=f"field '{field}'"):
            ModelMeta.from_dict(bad)
    (tmp_path / "model.json").write_text(json.dumps(meta()))
    with pytest.raises(BadInput, match="needs model.keras and model.json"):
        ModelMeta.read(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"")
    assert ModelMeta.read(tmp_path) == m


def test_utm_zones_with_the_norway_and_svalbard_exceptions():
    assert utm_epsg(-58.4, -34.6) == 32721  # Buenos Aires
    assert utm_epsg(5.3, 60.4) == 32632  # Bergen: zone 32 is widened over south-west Norway
    assert utm_epsg(2.0, 60.4) == 32631
    assert utm_epsg(15.6, 78.2) == 32633  # Longyearbyen: Svalbard has four wide zones
    assert utm_epsg(7.0, 78.5) == 32631 and utm_epsg(25.0, 78.5) == 32635 and utm_epsg(35.0, 79.0) == 32637
    assert utm_epsg(179.99, 10) == 32660 and utm_epsg(180.0, 10) == 32601


def test_every_enum_is_checked_by_the_database():
    """The CHECK constraints of the tables name exactly the values of the enums."""
    checks = {(t.name, str(c.name).removeprefix(f"ck_{t.name}_")): str(c.sqltext) for t in Base.metadata.tables.values()
              for c in t.constraints if isinstance(c, sa.CheckConstraint)}
    expected = {("models", "kind"): ModelKind, ("scenes", "provider"): Provider, ("scenes", "status"): SceneStatus,
                ("runs", "status"): RunStatus, ("detections", "kind"): DetectionKind,
                ("changes", "source"): ChangeSource, ("alerts", "status"): AlertStatus,
                ("alerts", "confidence"): Confidence, ("alerts", "source"): ChangeSource,
                ("parcel_changes", "verdict"): Verdict, ("subscriptions", "min_confidence"): Confidence,
                ("deliveries", "status"): DeliveryStatus, ("deliveries", "event"): AlertEvent}
    for (table, column), enum in expected.items():
        assert checks[(table, column)] == f"{column} IN ({', '.join(repr(v) for v in values(enum))})"
    assert all(p in checks[("areas", "providers")] for p in values(AREA_PROVIDERS))


def test_the_database_refuses_unknown_names(engine):
    with engine.connect() as conn:
        aid = conn.execute(sa.text(
            "INSERT INTO areas (name, footprint, utm_epsg, cadence, providers, max_cloud) VALUES "
            "('x', ST_Multi(ST_MakeEnvelope(0, 0, 1, 1, 4326)), 32631, interval '5 days', ARRAY['local'], 20) "
            "RETURNING id")).scalar()
        for sql in ["INSERT INTO scenes (area_id, provider, product_id, acquired_at, status) "
                    "VALUES (:aid, 'local', 'p', now(), 'downloaded')",
                    "INSERT INTO scenes (area_id, provider, product_id, acquired_at) VALUES (:aid, 'ftp', 'p', now())",
                    "UPDATE areas SET cadence = interval '30 seconds' WHERE id = :aid",
                    "UPDATE areas SET providers = ARRAY['import'] WHERE id = :aid"]:
            with pytest.raises(sa.exc.IntegrityError, match="check constraint"), conn.begin_nested():
                conn.execute(sa.text(sql), {"aid": aid})


def test_cli_and_api_refuse_the_same_bbox(cli, tmp_path):
    err = cli("alerts", "list", "--bbox", "500,500,600,600", expect=2).stderr
    assert "within -180..180" in err
