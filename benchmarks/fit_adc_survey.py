"""Refit the ADC energy and area defaults of :mod:`archsim.components` from B. Murmann's ADC
Performance Survey (https://github.com/bmurmann/ADC-survey, ``xls/ADCsurvey_rev20250609.xlsx``;
ISSCC and VLSI sheets, 1997-2025). Prints the constants ``ADC_FOMW_FIT``, ``ADC_AREA_FIT`` and
the frontier designs behind them.

Energy: the Walden figure of merit FOMW_hf = P / (fsnyq x 2^ENOB) of the 5 best designs in each
decade of Nyquist rate (1 MS/s .. 10 GS/s), mean of log10 per decade, a least-squares line in
log10 FOMW vs log10 fsnyq: the survey's frontier at each speed.

Area: least squares of log10(area) on ENOB, log10 fsnyq and log10 node over the designs with a
reported area, SNDR <= 62 dB and fsnyq >= 1 MS/s; the intercept moved to the 5th percentile of the
residuals (the smallest ~5% of designs for their resolution, speed and node).

Run: python benchmarks/fit_adc_survey.py PATH/TO/ADCsurvey_rev20250609.xlsx
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import xml.etree.ElementTree as ET
import zipfile

import numpy as np

NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def read_sheets(path: str) -> dict[str, list[dict[str, object]]]:
    """Sheet name -> rows as {header: value} (the first row is the header)."""
    z = zipfile.ZipFile(path)
    shared = [''.join(t.text or '' for t in si.iter(f"{NS}t"))
              for si in ET.fromstring(z.read("xl/sharedStrings.xml")).findall(f"{NS}si")]
    rels = {r.get("Id"): r.get("Target")
            for r in ET.fromstring(z.read("xl/_rels/workbook.xml.rels"))}
    out = {}
    for sheet in ET.fromstring(z.read("xl/workbook.xml")).find(f"{NS}sheets"):
        target = rels[sheet.get(REL)]
        if "worksheets" not in target:
            continue
        rows = []
        for row in ET.fromstring(z.read("xl/" + target.lstrip("/").removeprefix("xl/"))
                                 ).iter(f"{NS}row"):
            cells = {}
            for c in row.findall(f"{NS}c"):
                col = re.match(r"[A-Z]+", c.get("r")).group()
                v = c.find(f"{NS}v")
                if v is None or v.text is None:
                    continue
                if c.get("t") == "s":
                    cells[col] = shared[int(v.text)]
                else:
                    try:
                        cells[col] = float(v.text)
                    except (TypeError, ValueError):
                        cells[col] = v.text
            rows.append(cells)
        if rows:
            header = rows[0]
            out[sheet.get("name")] = [{header[k]: v for k, v in r.items() if k in header}
                                      for r in rows[1:]]
    return out


def fit(path: str) -> None:
    sheets = read_sheets(path)
    designs = [r for name in ("ISSCC", "VLSI") for r in sheets[name]]
    num = lambda r, k: r.get(k) if isinstance(r.get(k), float) else None   # noqa: E731
    good = [r for r in designs if num(r, "FOMW_hf [fJ/conv-step]") and num(r, "fsnyq [Hz]")]
    print(f"{len(designs)} designs, {len(good)} with FOMW_hf and fsnyq")
    xs, ys = [], []
    for decade in range(6, 11):
        sel = [r for r in good if 10 ** decade <= r["fsnyq [Hz]"] < 10 ** (decade + 1)]
        best = sorted(sel, key=lambda r: r["FOMW_hf [fJ/conv-step]"])[:5]
        xs.append(statistics.mean(math.log10(r["fsnyq [Hz]"]) for r in best))
        ys.append(statistics.mean(math.log10(r["FOMW_hf [fJ/conv-step]"]) for r in best))
        print(f"  1e{decade} S/s: {len(sel)} designs; 5 best FOMW_hf "
              f"{[round(r['FOMW_hf [fJ/conv-step]'], 2) for r in best]} fJ, nodes "
              f"{[r['TECHNOLOGY'] for r in best]} um")
    slope, intercept = np.polyfit(xs, ys, 1)
    print(f"ADC_FOMW_FIT = ({intercept:.4f}, {slope:.4f})   # log10(FOMW / fJ) = a + b log10(fs / Hz)")

    area = [r for r in good if num(r, "AREA [mm^2]") and num(r, "TECHNOLOGY")
            and r["SNDR_plot [dB]"] <= 62 and r["fsnyq [Hz]"] >= 1e6]
    x = np.array([[1.0, (r["SNDR_plot [dB]"] - 1.76) / 6.02, math.log10(r["fsnyq [Hz]"]),
                   math.log10(r["TECHNOLOGY"] * 1000)] for r in area])
    y = np.array([math.log10(r["AREA [mm^2]"] * 1e6) for r in area])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    c0 = coef[0] + np.quantile(y - x @ coef, 0.05)
    print(f"{len(area)} designs with area; ADC_AREA_FIT = ({c0:.4f}, {coef[1]:.4f}, {coef[2]:.4f}, "
          f"{coef[3]:.4f})   # log10(area / um2) = c0 + c1 bits + c2 log10(fs / Hz) + "
          "c3 log10(node / nm)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xlsx", help="ADCsurvey_rev20250609.xlsx from github.com/bmurmann/ADC-survey")
    fit(ap.parse_args().xlsx)
