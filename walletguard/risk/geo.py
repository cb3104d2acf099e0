"""IP geolocation behind a port: a MaxMind-format ``.mmdb`` reader, or the sandbox table.

Production points ``WALLETGUARD_GEOIP_DATABASE`` at a GeoLite2-City or DB-IP City Lite file
(both MaxMind DB format, read offline with ``geoip2``). Without it the sandbox table
``risk/data/sandbox_geo.csv`` answers for the Chinese ranges the scenarios and tests use. A place
is coarse on purpose (province, city, the city's centre): the risk engine needs "which city", not
where someone lives.
"""

from __future__ import annotations

import csv
import ipaddress
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Protocol

import geoip2.database
import geoip2.errors

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class Place:
    province: str
    city: str
    lat: float
    lon: float

    @property
    def label(self) -> str:
        return self.province if self.province == self.city else f"{self.province}/{self.city}"


class GeoLocator(Protocol):
    def locate(self, ip: str | None) -> Place | None:
        """The place of ``ip``, or None when unknown (private, malformed or not in the data)."""
        ...


def distance_km(a: Place, b: Place) -> float:
    """Great-circle distance (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class SandboxGeo:
    """A small CIDR table (longest prefix wins), for the sandbox, the tests and the simulator."""

    def __init__(self, rows: list[tuple[ipaddress.IPv4Network, Place]]) -> None:
        # Longest prefixes first, so the first match is the most specific.
        self.rows = sorted(rows, key=lambda row: -row[0].prefixlen)
        self._cache: dict[str, Place | None] = {}

    @classmethod
    def from_csv(cls, text: str) -> SandboxGeo:
        rows: list[tuple[ipaddress.IPv4Network, Place]] = []
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        for record in csv.DictReader(lines):
            network = ipaddress.IPv4Network(record["cidr"].strip())
            place = Place(
                record["province"].strip(),
                record["city"].strip(),
                float(record["lat"]),
                float(record["lon"]),
            )
            rows.append((network, place))
        return cls(rows)

    def locate(self, ip: str | None) -> Place | None:
        if not ip:
            return None
        if ip in self._cache:
            return self._cache[ip]
        found: Place | None = None
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv4Address):
            found = next((place for net, place in self.rows if address in net), None)
        if len(self._cache) < 65536:
            self._cache[ip] = found
        return found


class MaxMindGeo:
    """A GeoLite2-City / DB-IP City ``.mmdb`` file, read with ``geoip2`` (zh-CN names first)."""

    def __init__(self, path: Path) -> None:
        self.reader = geoip2.database.Reader(str(path), locales=["zh-CN", "en"])
        self._cache: dict[str, Place | None] = {}

    def locate(self, ip: str | None) -> Place | None:
        if not ip:
            return None
        if ip in self._cache:
            return self._cache[ip]
        found: Place | None = None
        try:
            city = self.reader.city(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            city = None
        if city is not None and city.location.latitude is not None:
            province = city.subdivisions.most_specific.name or city.country.name or ""
            found = Place(
                province=province,
                city=city.city.name or province,
                lat=float(city.location.latitude),
                lon=float(city.location.longitude or 0.0),
            )
        if len(self._cache) < 65536:
            self._cache[ip] = found
        return found


@lru_cache(maxsize=1)
def sandbox_geo() -> SandboxGeo:
    data = resources.files("walletguard.risk").joinpath("data/sandbox_geo.csv")
    return SandboxGeo.from_csv(data.read_text(encoding="utf-8"))


@lru_cache(maxsize=4)
def _maxmind(path: str) -> MaxMindGeo:
    return MaxMindGeo(Path(path))


def geo_locator(database: Path | None) -> GeoLocator:
    """The configured locator: the ``.mmdb`` file when one is set, else the sandbox table."""
    if database is not None:
        return _maxmind(str(database))
    return sandbox_geo()
