"""SUVbw from a PET series' DICOM tags: one factor per series, and the tags it came from.

Why: the network was trained on PET in SUV (body weight), while scanners store activity
concentration (Bq/mL, or counts on some Philips exports). SUVbw = value x weight (g) / dose (Bq)
at the time the images are decay-corrected to. The rules follow the QIBA vendor-neutral
pseudo-code: DecayCorrection START decays the injected dose from the radiopharmaceutical start to
the scan start (series date/time, or the earliest acquisition when a post-processed series got a
later series time, or GE's private scan time); ADMIN needs no decay; Philips CNTS images use the
private SUV scale factor (7053,1000), or the activity concentration factor (7053,1009) then as
Bq/mL. Every missing or implausible tag is a one-line error naming the tag, because a silently
wrong SUV shifts the crop and every SUV figure of the report.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Sequence

from HNTumorSegLib.errors import InputError

#: Plausible ranges; outside them the tag is more likely wrong (or in other units) than true.
WEIGHT_KG = (1.0, 500.0)
DOSE_BQ = (1e6, 5e10)          # 1 MBq .. 50 GBq (a dose written in MBq fails here)
HALF_LIFE_S = (60.0, 1e7)      # 1 min .. ~116 days
MAX_UPTAKE_S = 24 * 3600.0     # injection to scan
#: With times of day only, an injection time after the scan time is taken as the evening before (a scan just
#: after midnight) only if that makes the uptake at most this long; later, the times contradict each other.
MIDNIGHT_UPTAKE_S = 6 * 3600.0
PHILIPS_CREATOR = "Philips PET Private Group"
GE_CREATOR = "GEMS_PETD_01"
OVERRIDE_HINT = "pass --pet-units suv if the PET is already in SUV"


@dataclass(frozen=True)
class SuvConversion:
    """``factor`` turns the series' modality values into SUVbw; ``tags`` says where it came from."""

    factor: float
    method: str
    units: str
    tags: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"suv_factor": self.factor, "suv_factor_unit": f"SUV per {_UNIT_WORDS.get(self.units, self.units)}",
                "method": self.method, "units": self.units, "tags": self.tags}


_UNIT_WORDS = {"BQML": "Bq/mL", "CNTS": "count unit", "GML": "g/mL", "SUV": "SUV"}


def already_suv(reason: str) -> SuvConversion:
    """No conversion: the user says (``--pet-units suv``) or the tags say (GML) the PET is in SUV."""
    return SuvConversion(1.0, reason, "SUV")


def _value(ds, keyword: str, tag: str, where: str, hint: str = OVERRIDE_HINT):
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise InputError(f"{where}: {keyword} {tag} is missing; SUVbw cannot be computed ({hint})")
    return value


def _number(ds, keyword: str, tag: str, where: str, lo: float, hi: float, unit: str,
            hint: str = OVERRIDE_HINT) -> float:
    raw = _value(ds, keyword, tag, where, hint)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {keyword} {tag} is {raw!r}, not a number") from None
    if not lo <= value <= hi:
        raise InputError(f"{where}: {keyword} {tag} is {value:g} {unit}, implausible "
                         f"(expected {lo:g} to {hi:g} {unit}); check the tag ({hint})")
    return value


#: A DICOM date and time run together (DT: YYYYMMDD[HH[MM[SS[.F]]]] with an optional UTC offset).
_DT_TEXT = re.compile(r"\d{8}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?([+-]\d{4})?")


def _datetime(date: str, time: str, where: str, what: str, scan=None) -> _dt.datetime:
    """A date and a time of day (or a DT in ``date`` alone), strictly: a malformed value is an InputError.
    A DT that carries a UTC offset is given in the local time of the data set ``scan`` when it says which
    (:func:`_local_zone`), so that it compares with the series and acquisition times (TM: local, no offset).

    Why strict: pydicom's parser is lenient (a time "10:15" read as 10:00), and a wrong time gives a wrong
    decay factor without a word. The ACR-NEMA forms that the standard still allows on reading (YYYY.MM.DD,
    HH:MM:SS) are accepted by dropping their separators.
    """
    from pydicom.valuerep import DT

    day = str(date).strip()
    if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", day[:10]):
        day = day[:10].replace(".", "") + day[10:]
    clock = str(time).strip()
    if re.fullmatch(r"\d{2}(:\d{2}(:\d{2}(\.\d{1,6})?)?)?", clock):
        clock = clock.replace(":", "")
    text = f"{day}{clock}"
    if not _DT_TEXT.fullmatch(text):
        shown = f"{str(date).strip()!r}" + (f" and {str(time).strip()!r}" if str(time).strip() else "")
        raise InputError(f"{where}: {what} is {shown}, not a DICOM date and time (YYYYMMDD and HHMMSS); check the tags")
    value = DT(text)
    zone = _local_zone(scan, where) if value.tzinfo is not None and scan is not None else None
    if zone is not None:
        value = value.astimezone(zone)
    return value.replace(tzinfo=None)


def _local_zone(ds, where: str) -> _dt.timezone | None:
    """The time zone of the data set's times, from TimezoneOffsetFromUTC (0008,0201); None when not given.

    Why: a radiopharmaceutical start written as a DT in UTC ("...083000+0000") beside series times in local
    time (+0100) was taken as local, an hour of uptake off. Without the tag the local offset is unknown and
    nothing is converted (a guess could be as wrong as the offset it corrects).
    """
    text = str(ds.get("TimezoneOffsetFromUTC", "") or "").strip()
    if not text:
        return None
    match = re.fullmatch(r"([+-])(\d{2})(\d{2})", text)
    if not match or int(match[2]) > 14 or int(match[3]) >= 60:
        raise InputError(f"{where}: TimezoneOffsetFromUTC (0008,0201) is {text!r}, not an offset +HHMM or -HHMM; "
                         "check the tag")
    minutes = int(match[2]) * 60 + int(match[3])
    return _dt.timezone(_dt.timedelta(minutes=-minutes if match[1] == "-" else minutes))


def _private(ds, group: int, element: int, creator: str):
    try:
        return ds.get_private_item(group, element, creator).value
    except (KeyError, ValueError):
        return None


def _scan_time(headers: Sequence, where: str, hint: str = OVERRIDE_HINT) -> tuple[_dt.datetime, str]:
    """Start of the scan: the series date/time unless it lies after the first acquisition."""
    first = headers[0]
    series = _datetime(_value(first, "SeriesDate", "(0008,0021)", where, hint),
                       _value(first, "SeriesTime", "(0008,0031)", where, hint), where,
                       "SeriesDate/SeriesTime (0008,0021)/(0008,0031)")
    acquisitions = [_datetime(h.AcquisitionDate, h.AcquisitionTime, where,
                              "AcquisitionDate/AcquisitionTime (0008,0022)/(0008,0032)") for h in headers
                    if str(h.get("AcquisitionDate", "") or "").strip() and str(h.get("AcquisitionTime", "") or "").strip()]
    if not acquisitions or series <= min(acquisitions):
        return series, "SeriesDate/SeriesTime (0008,0021)/(0008,0031)"
    ge = _private(first, 0x0009, 0x0D, GE_CREATOR)
    if ge:  # a date and time (DT); older exports hold a time of day only
        text = str(ge).strip()
        what = "GE private scan date/time (0009,100D)"
        scan = _datetime(text, "", where, what, first) if len(text) >= 14 else \
            _datetime(first.SeriesDate, text, where, what)
        return scan, what
    return min(acquisitions), "earliest AcquisitionDate/AcquisitionTime (0008,0022)/(0008,0032) (series time is later)"


def _injection_time(drug, first, where: str, hint: str = OVERRIDE_HINT) -> tuple[_dt.datetime, str, bool]:
    """(time, source, from a time of day only): the radiopharmaceutical start."""
    start_dt = str(drug.get("RadiopharmaceuticalStartDateTime", "") or "").strip()
    if start_dt:
        source = "RadiopharmaceuticalStartDateTime (0018,1078)"
        return _datetime(start_dt, "", where, source, first), source, False
    start = _value(drug, "RadiopharmaceuticalStartTime", "(0018,1072)", where, hint)
    date = _value(first, "SeriesDate", "(0008,0021)", where, hint)
    source = "SeriesDate (0008,0021) + RadiopharmaceuticalStartTime (0018,1072)"
    return _datetime(date, start, where, source), source, True


def _suvbw_per_bqml(headers: Sequence, where: str, hint: str = OVERRIDE_HINT) -> tuple[float, dict]:
    first = headers[0]
    weight = _number(first, "PatientWeight", "(0010,1030)", where, *WEIGHT_KG, "kg", hint)
    info = first.get("RadiopharmaceuticalInformationSequence")
    if not info:
        raise InputError(f"{where}: RadiopharmaceuticalInformationSequence (0054,0016) is missing; SUVbw cannot be "
                         f"computed ({hint})")
    drug = info[0]
    dose = _number(drug, "RadionuclideTotalDose", "(0018,1074)", where, *DOSE_BQ, "Bq", hint)
    half_life = _number(drug, "RadionuclideHalfLife", "(0018,1075)", where, *HALF_LIFE_S, "s", hint)
    correction = str(_value(first, "DecayCorrection", "(0054,1102)", where, hint)).strip().upper()
    tags = {"Units": "BQML", "PatientWeight_kg": weight, "RadionuclideTotalDose_Bq": dose,
            "RadionuclideHalfLife_s": half_life, "DecayCorrection": correction}
    if correction == "ADMIN":
        decayed = dose
    elif correction == "START":
        injection, injection_source, time_only = _injection_time(drug, first, where, hint)
        scan, scan_source = _scan_time(headers, where, hint)
        uptake = (scan - injection).total_seconds()
        if uptake < 0 and time_only and uptake + 86400 <= MIDNIGHT_UPTAKE_S:
            injection -= _dt.timedelta(days=1)  # injected before midnight, scanned after
            injection_source += " (the day before the series date)"
            uptake += 86400
        if not 0 <= uptake <= MAX_UPTAKE_S:
            raise InputError(f"{where}: radiopharmaceutical start {injection.isoformat()} ({injection_source}) and scan "
                             f"start {scan.isoformat()} ({scan_source}) are {uptake / 60:.0f} min apart, implausible; "
                             "check the tags")
        decayed = dose * 2.0 ** (-uptake / half_life)
        tags.update({"injection": injection.isoformat(), "injection_source": injection_source,
                     "scan_start": scan.isoformat(), "scan_start_source": scan_source, "uptake_s": uptake,
                     "decay_factor": decayed / dose})
    else:
        raise InputError(f"{where}: DecayCorrection (0054,1102) is {correction!r}; SUVbw is computed for START or "
                         f"ADMIN only ({hint})")
    factor = weight * 1000.0 / decayed
    tags["decayed_dose_Bq"] = decayed
    return factor, tags


def suv_conversion(headers: Sequence, where: str, hint: str = OVERRIDE_HINT,
                   choose_series: str = "with --pet-series") -> SuvConversion:
    """The SUVbw factor of a PET series from its slice headers (any order).

    ``hint``: what the user can do instead, ending each error (the CLI's ``--pet-units suv``; the Slicer
    module says its own); ``choose_series``: how the user picks another series (an option, or a selector).
    """
    if not headers:
        raise InputError(f"{where}: no PET slices")
    first = headers[0]
    corrected = [str(v).upper() for v in (first.get("CorrectedImage") or [])]
    if corrected and "ATTN" not in corrected:
        raise InputError(f"{where}: CorrectedImage (0028,0051) lacks ATTN: this PET is not attenuation-corrected, "
                         f"so it has no SUV; pick the attenuation-corrected series {choose_series}")
    units = str(_value(first, "Units", "(0054,1001)", where, hint)).strip().upper()
    if units == "GML":
        return SuvConversion(1.0, "Units GML: already SUVbw", "GML", {"Units": "GML"})
    if units == "BQML":
        factor, tags = _suvbw_per_bqml(headers, where, hint)
        return SuvConversion(factor, "SUVbw from Bq/mL (weight / decayed dose)", "BQML", tags)
    if units == "CNTS":
        scale = {_private(h, 0x7053, 0x00, PHILIPS_CREATOR) for h in headers}
        if None not in scale:
            values = {float(v) for v in scale}
            if len(values) != 1:
                raise InputError(f"{where}: Philips SUV scale factor (7053,1000) differs between slices")
            factor = values.pop()
            if not factor > 0:
                raise InputError(f"{where}: Philips SUV scale factor (7053,1000) is {factor:g}, not positive")
            return SuvConversion(factor, "Philips private SUV scale factor (7053,1000)", "CNTS",
                                 {"Units": "CNTS", "PhilipsSUVScaleFactor_7053_1000": factor})
        activity = _private(first, 0x7053, 0x09, PHILIPS_CREATOR)
        if activity is None:
            raise InputError(f"{where}: Units (0054,1001) is CNTS and the Philips SUV scale factor (7053,1000) is "
                             f"missing; SUVbw cannot be computed ({hint})")
        bqml_factor, tags = _suvbw_per_bqml(headers, where, hint)
        tags.update({"Units": "CNTS", "PhilipsActivityConcentrationScaleFactor_7053_1009": float(activity)})
        return SuvConversion(float(activity) * bqml_factor,
                             "Philips activity concentration factor (7053,1009), then SUVbw from Bq/mL", "CNTS", tags)
    raise InputError(f"{where}: Units (0054,1001) is {units!r}; SUVbw is computed from BQML, CNTS (Philips) or GML "
                     f"({hint})")
