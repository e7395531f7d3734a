"""The rectum: course along the sacral curve, wall and content per segment, tumour, mimic.

Segments (lower / mid / upper) each have their own content: gas (with a fluid level), fluid,
faeces (mottled, with gas bubbles) or collapsed (no lumen: a thick soft-tissue ring with a star
of mucosal folds). Ground-truth labels follow from the painted anatomy: rectal wall and folds
-> 1, tumour -> 2, only from the anorectal junction (Z = 0) to the rectosigmoid junction.
"""
from __future__ import annotations

import math

import numpy as np

from usam.phantom.labels import L
from usam.phantom.params import SEGMENTS, CaseParams
from usam.phantom.shapes import smoothstep

_CONTENT_LABEL = {"gas": "rectum_gas", "fluid": "rectum_fluid", "faeces": "rectum_faeces"}


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


class RectumModel:
    """Centreline, radius and wall of the rectum as functions of Z, and its painting on a slice."""

    def __init__(self, cp: CaseParams, sacrum_front):
        self.cp = cp
        self.r = cp.rectum
        self.t = cp.tumour
        self._sf = sacrum_front
        self.seg_len = self.r.length / SEGMENTS
        rng = np.random.default_rng(cp.seed + 5)
        self.bubbles = []   # faeces gas bubbles: (z, angle, radial fraction, radius)
        for k, c in enumerate(self.r.content):
            if c == "faeces":
                n = int(rng.integers(15, 45))
                z0 = k * self.seg_len
                for _ in range(n):
                    self.bubbles.append((float(z0 + rng.uniform(0, self.seg_len)), float(rng.uniform(-np.pi, np.pi)),
                                         float(np.sqrt(rng.uniform(0, 0.8))), float(rng.uniform(1.2, 4.5))))
        self.star_k = int(rng.integers(4, 7))
        self.star_ph = float(rng.uniform(0, 2 * np.pi))

    def segment(self, z: float) -> int:
        return int(np.clip(z // self.seg_len, 0, SEGMENTS - 1))

    def _blend(self, values, z):
        """Per-segment value interpolated smoothly across segment boundaries (10 mm ramps)."""
        mids = (np.arange(SEGMENTS) + 0.5) * self.seg_len
        v = float(np.interp(z, mids, values))
        k = self.segment(z)
        # stay at the segment's own value in its middle, ramp only near the boundaries
        edge = min(abs(z - k * self.seg_len), abs(z - (k + 1) * self.seg_len))
        w = float(smoothstep(edge / 10.0))
        return w * values[k] + (1 - w) * v

    def radius(self, z: float) -> float:
        r = self._blend(self.r.radius, np.clip(z, 0, self.r.length))
        return r * (0.75 + 0.25 * float(smoothstep(z / 15.0)))   # narrower at the junction

    def wall(self, z: float) -> float:
        w = self._blend(self.r.wall, np.clip(z, 0, self.r.length))
        if self.r.mimic >= 0 and self.segment(z) == self.r.mimic:
            k = self.r.mimic
            mid = (k + 0.5) * self.seg_len
            w += 5.0 * float(smoothstep(1.0 - abs(z - mid) / (0.5 * self.seg_len)))
        return w

    def center(self, z: float) -> tuple[float, float, float]:
        """(x, y, outer radius) of the rectum (the anal canal below Z = 0)."""
        r = self.radius(max(z, 0.0))
        zc = max(z, 0.0)
        y = float(self._sf(self.cp, zc)) - self.r.gap - r * (1 - self.r.ecc)
        x = self.r.x0
        if z < 0:   # anal canal: backwards and down from the junction
            y += 0.45 * (-z)
            r = 10.0
        return x, y, r

    def _tumour_thickness(self, z: float, phi: np.ndarray) -> np.ndarray:
        t = self.t
        if not t.present or t.shape == "polypoid":
            return np.zeros_like(phi)
        prof = float(smoothstep((z - t.z0) / 6.0) * smoothstep((t.z1 - z) / 6.0))
        if prof <= 0 or not 0 <= z <= self.r.length:
            return np.zeros_like(phi)
        if t.shape == "annular":
            ang = np.ones_like(phi)
        else:
            ang = smoothstep((t.halfwidth - np.abs(_wrap(phi - t.angle))) / 0.45)
        lobes = 1.0
        for k, a, ph in t.lobes:
            lobes = lobes + a * np.cos(k * phi + ph + 0.05 * z)
        return t.thick * prof * ang * np.clip(lobes, 0.4, None)

    def paint(self, cv) -> None:
        """Rectum (wall, content, tumour) or anal canal on one slice."""
        z = cv.z
        r = self.r
        if z < -r.anal_len or z > r.length + 12:
            return
        cx, cy, rr = self.center(z)
        if z < 0:   # anal canal with its sphincters, collapsed lumen; not labelled
            w = cv.window((cx - 22, cx + 22, cy - 22, cy + 22))
            if w:
                sl, X, Y = w
                rho = np.hypot(X - cx, Y - cy)
                cv.fill(sl, rho - (rr + 6), L["anal_sphincter"])
                cv.fill(sl, rho - rr, L["anal_canal"])
            return
        if z > r.length:   # the sigmoid tube continues it; close the rectum with a short dome
            rr *= math.sqrt(max(1 - ((z - r.length) / 12.0) ** 2, 0.0))
            if rr < 2:
                return
        t = self.t
        reach = rr * (1 + r.ecc) + t.thick + t.ext_mm + 6
        w = cv.window((cx - reach, cx + reach, cy - reach, cy + reach))
        if w is None:
            return
        sl, X, Y = w
        dx, dy = X - cx, Y - cy
        rho = np.hypot(dx, dy)
        phi = np.arctan2(dy, dx)
        ax, ay = rr * (1 + r.ecc), rr * (1 - r.ecc)
        r_ell = ax * ay / np.sqrt((ay * np.cos(phi)) ** 2 + (ax * np.sin(phi)) ** 2)
        folds = 1.0
        for k, a, ph in r.folds:
            folds = folds + a * np.cos(k * phi + ph + 0.02 * z)
        r_out = r_ell * folds
        seg = self.segment(z)
        content = r.content[seg]
        wall = self.wall(z) * (1.0 + 0.12 * np.cos(3 * phi + 0.05 * z))
        tum = self._tumour_thickness(z, phi)
        r_outer = r_out + 0.3 * tum
        r_inner = r_out - wall - 0.7 * tum
        if content == "collapsed":
            r_inner = np.minimum(r_inner, 0.0)
        region = cv.lab[sl]
        inside = rho < r_outer
        region[inside] = L["rectum_wall"]
        lumen = rho < r_inner
        if content in _CONTENT_LABEL:
            region[lumen] = L[_CONTENT_LABEL[content]]
            if content == "gas":
                level = cy + ay * (1 - 2 * r.fluid_level[seg])   # supine: fluid lies posterior (+Y)
                region[lumen & (Y > level)] = L["rectum_fluid"]
            for (bz, ba, bf, brad) in self.bubbles:
                if abs(bz - z) < brad:
                    rb = math.sqrt(brad * brad - (bz - z) ** 2)
                    rin = max(rr - self.wall(z) - 1, 1.0)
                    bx, by = cx + bf * rin * math.cos(ba), cy + bf * rin * (1 - r.ecc) * math.sin(ba)
                    region[lumen & ((X - bx) ** 2 + (Y - by) ** 2 < rb * rb)] = L["rectum_gas"]
        else:   # collapsed: a star of mucosal folds in the middle of a thick ring
            star = rho < 0.8 + max(rr - self.wall(z) - 1.0, 2.5) * (0.5 + 0.5 * np.cos(self.star_k * phi + self.star_ph)) ** 8
            region[star & inside] = L["rectum_folds"]
        if t.present and 0 <= z <= r.length:
            is_t = inside & ~lumen & (tum > 1.0)
            if t.shape == "polypoid":
                prof = float(smoothstep((z - t.z0) / 5.0) * smoothstep((t.z1 - z) / 5.0))
                if prof > 0:
                    rin = float(np.mean(np.maximum(r_inner, 0.5)))
                    size = t.thick * 0.9 * math.sqrt(prof)
                    px_, py_ = cx + (rin + 1) * math.cos(t.angle), cy + (rin + 1) * (1 - r.ecc) * math.sin(t.angle)
                    blob = (X - px_) ** 2 + (Y - py_) ** 2 < size * size
                    is_t = blob & (rho < r_outer)
            if t.extension and t.shape != "polypoid":
                spikes = np.clip(np.cos(5 * phi + 0.1 * z) * 0.6 + np.cos(11 * phi - 0.07 * z) * 0.5, 0, 1) ** 2
                is_t = is_t | ((rho < r_outer + t.ext_mm * spikes * (tum > 1.0)) & (rho >= r_outer) & (tum > 1.0))
            region[is_t] = L["tumour"]
