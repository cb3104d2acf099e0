"""Geolocation: a real MaxMind-format database built here, read through geoip2; the sandbox
table; impossible travel."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from walletguard.risk.geo import MaxMindGeo, Place, distance_km, geo_locator, sandbox_geo

SCENARIO_IPS = {
    "116.228.10.21": "上海",
    "116.233.40.8": "上海",
    "101.227.12.3": "上海",
    "113.108.77.5": "广东",
    "183.14.20.7": "广东",
    "61.135.169.121": "北京",
    "36.110.5.19": "北京",
    "117.136.0.9": "江苏",
    "117.136.12.80": "江苏",
    "222.186.20.9": "江苏",
    "218.30.64.194": "陕西",
}


def city(province: str, name: str, lat: float, lon: float) -> dict[str, object]:
    return {
        "country": {"iso_code": "CN", "names": {"zh-CN": "中国", "en": "China"}},
        "subdivisions": [{"names": {"zh-CN": province, "en": province}}],
        "city": {"names": {"zh-CN": name, "en": name}},
        "location": {"latitude": lat, "longitude": lon},
    }


@pytest.fixture
def mmdb(tmp_path: Path) -> Path:
    writer = MMDBWriter(
        ip_version=4, database_type="GeoLite2-City", languages=["zh-CN", "en"], description="t"
    )
    writer.insert_network(IPSet(["113.108.0.0/16"]), city("广东", "广州", 23.1291, 113.2644))
    writer.insert_network(IPSet(["116.228.0.0/16"]), city("上海", "上海", 31.2304, 121.4737))
    path = tmp_path / "city.mmdb"
    writer.to_db_file(str(path))
    return path


def test_a_real_mmdb_is_read_through_geoip2(mmdb: Path) -> None:
    geo = MaxMindGeo(mmdb)
    guangzhou = geo.locate("113.108.77.5")
    assert guangzhou is not None
    assert (guangzhou.province, guangzhou.city) == ("广东", "广州")
    assert guangzhou.lat == pytest.approx(23.1291)
    assert geo.locate("8.8.8.8") is None
    assert geo.locate("not an ip") is None
    assert geo.locate(None) is None


def test_the_setting_picks_the_mmdb_and_falls_back_to_the_sandbox(mmdb: Path) -> None:
    assert isinstance(geo_locator(mmdb), MaxMindGeo)
    assert geo_locator(None) is sandbox_geo()


@pytest.mark.parametrize(("ip", "province"), sorted(SCENARIO_IPS.items()))
def test_the_sandbox_table_covers_the_scenario_ips(ip: str, province: str) -> None:
    place = sandbox_geo().locate(ip)
    assert place is not None
    assert place.province == province


def test_unknown_and_private_addresses_have_no_place() -> None:
    for ip in ("10.0.0.1", "203.0.113.5", "::1", "testclient", ""):
        assert sandbox_geo().locate(ip) is None


def test_distances() -> None:
    shanghai = Place("上海", "上海", 31.2304, 121.4737)
    guangzhou = Place("广东", "广州", 23.1291, 113.2644)
    assert distance_km(shanghai, guangzhou) == pytest.approx(1210, rel=0.03)
    assert distance_km(shanghai, shanghai) == 0
