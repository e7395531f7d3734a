"""Geometric primitives evaluated on one axial slice (2D windows of patient-mm coordinates).

Every primitive returns an approximate signed distance in mm (negative inside), accurate near
the surface, which is where a cortex thickness or a wall is measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def smoothstep(t):
    """Cubic ramp 0 -> 1 on [0, 1]."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def span_halfwidth(ys: np.ndarray, cy: float, a: float, b: float, p: float) -> np.ndarray:
    """Half width per row of a superellipse |x/a|^p + |y/b|^p <= 1 (negative where the row misses it)."""
    t = 1.0 - np.abs((ys - cy) / b) ** p
    return np.where(t > 0, a * np.power(np.clip(t, 0, 1), 1.0 / p), -1.0)


def span_mask(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, a: float, b: float, p: float) -> np.ndarray:
    """Inside of a superellipse on the whole slice, via one half width per row (cheap)."""
    hw = span_halfwidth(ys, cy, a, b, p)
    return np.abs(xs[None, :] - cx) < hw[:, None]


def ellipse2d(X, Y, cx, cy, ax, ay, angle=0.0):
    """Signed distance to an ellipse to first order, (q - 1) / |grad q|."""
    dx, dy = X - cx, Y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    q = np.maximum(np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2), 1e-6)
    g = np.sqrt((dx / (ax * ax)) ** 2 + (dy / (ay * ay)) ** 2) / q
    return (q - 1.0) / np.maximum(g, 1e-9)


@dataclass
class Ellipsoid:
    """Ellipsoid with centre c, semi-axes a and rotation R (columns = its axes in patient frame)."""
    c: np.ndarray
    a: np.ndarray
    R: np.ndarray

    @staticmethod
    def make(c, a, rx=0.0, rz=0.0) -> "Ellipsoid":
        """Rotated by rx about the X axis (tilt in the sagittal plane), then rz about Z."""
        cx, sx, cz, sz = math.cos(rx), math.sin(rx), math.cos(rz), math.sin(rz)
        Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        return Ellipsoid(np.asarray(c, float), np.asarray(a, float), Rz @ Rx)

    def zrange(self) -> tuple[float, float]:
        h = float(np.sqrt(np.sum((self.R[2] * self.a) ** 2)))
        return self.c[2] - h, self.c[2] + h

    def bbox(self, z: float):
        """(x0, x1, y0, y1) bounding the section at z (None when z misses it)."""
        z0, z1 = self.zrange()
        if not z0 < z < z1:
            return None
        hx = float(np.sqrt(np.sum((self.R[0] * self.a) ** 2)))
        hy = float(np.sqrt(np.sum((self.R[1] * self.a) ** 2)))
        return self.c[0] - hx, self.c[0] + hx, self.c[1] - hy, self.c[1] + hy

    def sdf(self, X, Y, z):
        dx, dy, dz = X - self.c[0], Y - self.c[1], z - self.c[2]
        R, a = self.R, self.a
        l0 = (R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz) / a[0]
        l1 = (R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz) / a[1]
        l2 = (R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz) / a[2]
        q = np.maximum(np.sqrt(l0 * l0 + l1 * l1 + l2 * l2), 1e-6)
        # |grad q| from the in-plane components (the slice plane is where distances are measured)
        gx = (R[0, 0] * l0 / a[0] + R[0, 1] * l1 / a[1] + R[0, 2] * l2 / a[2]) / q
        gy = (R[1, 0] * l0 / a[0] + R[1, 1] * l1 / a[1] + R[1, 2] * l2 / a[2]) / q
        gz = (R[2, 0] * l0 / a[0] + R[2, 1] * l1 / a[1] + R[2, 2] * l2 / a[2]) / q
        return (q - 1.0) / np.maximum(np.sqrt(gx * gx + gy * gy + gz * gz), 1e-9)


@dataclass
class Tube:
    """Capsule chain: a polyline of points (K, 3) with radii (K,) linearly interpolated."""
    P: np.ndarray
    r: np.ndarray

    @staticmethod
    def make(points, radii) -> "Tube":
        P = np.asarray(points, float)
        r = np.broadcast_to(np.asarray(radii, float), (len(P),)).copy()
        return Tube(P, r)

    @staticmethod
    def smooth(points, radius, step=4.0) -> "Tube":
        """Catmull-Rom spline through control points, resampled every `step` mm."""
        P = np.asarray(points, float)
        if len(P) < 3:
            return Tube.make(P, radius)
        Q = np.vstack([2 * P[0] - P[1], P, 2 * P[-1] - P[-2]])
        out = []
        for i in range(1, len(Q) - 2):
            p0, p1, p2, p3 = Q[i - 1], Q[i], Q[i + 1], Q[i + 2]
            n = max(int(np.linalg.norm(p2 - p1) / step), 1)
            for t in np.arange(n) / n:
                t2, t3 = t * t, t * t * t
                out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                                  + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
        out.append(P[-1])
        return Tube.make(np.asarray(out), radius)

    def zrange(self) -> tuple[float, float]:
        return float(np.min(self.P[:, 2] - self.r)), float(np.max(self.P[:, 2] + self.r))

    def _segments(self, z: float):
        A, B = self.P[:-1], self.P[1:]
        ra, rb = self.r[:-1], self.r[1:]
        rr = np.maximum(ra, rb)
        lo = np.minimum(A[:, 2], B[:, 2]) - rr
        hi = np.maximum(A[:, 2], B[:, 2]) + rr
        k = (lo < z) & (z < hi)
        return A[k], B[k], ra[k], rb[k]

    def bbox(self, z: float):
        A, B, ra, rb = self._segments(z)
        if len(A) == 0:
            return None
        r = np.maximum(ra, rb)
        x0 = float(np.min(np.minimum(A[:, 0], B[:, 0]) - r))
        x1 = float(np.max(np.maximum(A[:, 0], B[:, 0]) + r))
        y0 = float(np.min(np.minimum(A[:, 1], B[:, 1]) - r))
        y1 = float(np.max(np.maximum(A[:, 1], B[:, 1]) + r))
        return x0, x1, y0, y1

    def sdf(self, X, Y, z):
        A, B, ra, rb = self._segments(z)
        if len(A) == 0:
            return np.full(np.broadcast(X, Y).shape, 1e3, np.float32)
        V = B - A
        vv = np.maximum(np.sum(V * V, axis=1), 1e-9)
        X3, Y3 = X[..., None], Y[..., None]
        t = ((X3 - A[:, 0]) * V[:, 0] + (Y3 - A[:, 1]) * V[:, 1] + (z - A[:, 2]) * V[:, 2]) / vv
        t = np.clip(t, 0.0, 1.0)
        dx = X3 - (A[:, 0] + t * V[:, 0])
        dy = Y3 - (A[:, 1] + t * V[:, 1])
        dz = z - (A[:, 2] + t * V[:, 2])
        d = np.sqrt(dx * dx + dy * dy + dz * dz) - (ra + t * (rb - ra))
        return d.min(axis=-1)


class Canvas:
    """One axial slice of the anatomy map being painted (later structures overwrite earlier)."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, z: float, lab: np.ndarray):
        self.xs, self.ys, self.z, self.lab = xs, ys, z, lab
        self.px = float(abs(xs[1] - xs[0]))

    def window(self, box, pad: float = 2.0):
        """(index slices, X row, Y column) of a mm box clipped to the slice; None outside."""
        if box is None:
            return None
        x0, x1, y0, y1 = box
        ix0 = int(np.searchsorted(self.xs, x0 - pad))
        ix1 = int(np.searchsorted(self.xs, x1 + pad))
        iy0 = int(np.searchsorted(self.ys, y0 - pad))
        iy1 = int(np.searchsorted(self.ys, y1 + pad))
        if ix1 <= ix0 or iy1 <= iy0:
            return None
        return (slice(iy0, iy1), slice(ix0, ix1)), self.xs[ix0:ix1][None, :], self.ys[iy0:iy1][:, None]

    def fill(self, sl, d, label: int, cortex=None, where=None):
        """Label d < 0 (optionally restricted by a boolean `where` of the window)."""
        region = self.lab[sl]
        inside = d < 0
        if where is not None:
            inside &= where
        if cortex is None:
            region[inside] = label
        else:
            t, lab_c = cortex
            region[inside] = lab_c
            region[inside & (d < -t)] = label
