"""Approximate geographic centroids of countries (ISO 3166-1 alpha-2 → lat, lon).

Used only when a shipping address carries a postcode but no coordinates: the
route is then chosen from the country's centre. For countries with distant
overseas territories (FR, ES, PT, NO, DK, US) the value is the centre of the
mainland, where nearly all addresses are. Precision is a few tens of km at
best, which is enough to rank bureaus across countries, not within a city.
"""

from __future__ import annotations

from types import MappingProxyType

_CENTROIDS: dict[str, tuple[float, float]] = {
    # EU
    "AT": (47.59, 14.14),
    "BE": (50.64, 4.66),
    "BG": (42.77, 25.22),
    "HR": (45.10, 15.20),
    "CY": (35.05, 33.22),
    "CZ": (49.74, 15.34),
    "DK": (56.00, 10.00),
    "EE": (58.67, 25.54),
    "FI": (64.50, 26.27),
    "FR": (46.60, 2.45),
    "DE": (51.16, 10.45),
    "GR": (39.07, 22.96),
    "HU": (47.16, 19.40),
    "IE": (53.18, -8.14),
    "IT": (42.80, 12.57),
    "LV": (56.88, 24.60),
    "LT": (55.33, 23.90),
    "LU": (49.77, 6.09),
    "MT": (35.92, 14.41),
    "NL": (52.13, 5.29),
    "PL": (52.13, 19.39),
    "PT": (39.60, -8.00),
    "RO": (45.85, 24.97),
    "SK": (48.71, 19.49),
    "SI": (46.12, 14.82),
    "ES": (40.24, -3.65),
    "SE": (62.78, 16.75),
    # EEA outside the EU, and Europe beyond
    "IS": (64.96, -18.60),
    "LI": (47.16, 9.55),
    "NO": (64.50, 11.50),
    "GB": (54.00, -2.50),
    "CH": (46.80, 8.23),
    # Americas
    "US": (39.83, -98.58),
    "CA": (56.13, -106.35),
    "MX": (23.63, -102.55),
    "BR": (-14.24, -51.93),
    "AR": (-38.42, -63.62),
    # Asia, Oceania, Africa
    "JP": (36.20, 138.25),
    "KR": (35.91, 127.77),
    "CN": (35.86, 104.20),
    "IN": (20.59, 78.96),
    "AU": (-25.27, 133.78),
    "NZ": (-41.50, 172.50),
    "ZA": (-30.56, 22.94),
}

# Codes in common use that are not the ISO alpha-2 code of the country.
ALIASES = MappingProxyType({"UK": "GB", "EL": "GR"})

CENTROIDS = MappingProxyType(_CENTROIDS)


def centroid(country: str) -> tuple[float, float] | None:
    """The (lat, lon) centre of `country` (case-insensitive), or None if unknown."""
    code = country.strip().upper()
    return CENTROIDS.get(ALIASES.get(code, code))
