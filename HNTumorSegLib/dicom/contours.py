"""Planar contours of a label slice that enclose exactly its voxels.

Why these contours: an RT Structure Set stores a structure as closed polygons per CT slice, and a
planning system turns them back into voxels (a voxel is inside when its centre is) and into a
volume (polygon area x slice thickness). A polygon that runs along the voxel edges does both
exactly: every voxel centre of the mask lies inside it, every other centre outside, and its area
is the voxel count times the voxel area, so the volume a planning system shows equals the
volume in our report.

Holes: readers disagree on how the polygons of one slice combine. Some take the even-odd rule
(an inner polygon is a hole), others the union (plastimatch by default, and older systems), which
would fill every hole. So each hole is cut into the polygon around it with a zero-width
"keyhole" channel along a voxel edge: one polygon that goes around the outside, down the channel,
around the hole the other way and back. No voxel centre lies on the channel, so union and
even-odd give the same voxels. Several islands per slice are separate polygons (an island inside
a hole too). Foreground is 4-connected: voxels touching only at a corner become separate polygons
that share that corner point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Polygon:
    """Vertices (n, 2) as (column, row) in continuous pixel-index units (pixel centres are integers)."""

    vertices: np.ndarray
    is_hole: bool

    @property
    def area(self) -> float:
        """Unsigned area in pixels."""
        return abs(_signed_area(self.vertices))


def _signed_area(v: np.ndarray) -> float:
    x, y = v[:, 0], v[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _edges(mask: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed boundary edges between pixel corners, foreground on the right (rows grow downwards).

    Corner (r, c) is the top-left corner of pixel (r, c) in the padded mask.
    """
    m = np.pad(mask.astype(bool), 1)
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    fg = m[1:-1, 1:-1]
    sides = (
        (fg & ~m[:-2, 1:-1], (0, 0), (0, 1)),    # top: left to right
        (fg & ~m[1:-1, 2:], (0, 1), (1, 1)),     # right: downwards
        (fg & ~m[2:, 1:-1], (1, 1), (1, 0)),     # bottom: right to left
        (fg & ~m[1:-1, :-2], (1, 0), (0, 0)),    # left: upwards
    )
    for present, start, end in sides:
        rows, cols = np.nonzero(present)
        for r, c in zip((rows + 1).tolist(), (cols + 1).tolist()):
            out.setdefault((r + start[0], c + start[1]), []).append((r + end[0], c + end[1]))
    return out


def _right_of(prev: tuple[int, int], cur: tuple[int, int]) -> tuple[int, int]:
    """The corner one step to the right of the direction prev -> cur (rows grow downwards)."""
    dr, dc = cur[0] - prev[0], cur[1] - prev[1]
    return cur[0] + dc, cur[1] - dr


def _trace(out: dict[tuple[int, int], list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
    """Link the edges into closed loops of corners (each edge used once)."""
    loops = []
    while out:
        start = min(out)  # top-left corner of what is left: never a corner between diagonal pixels
        first = out[start].pop(0)
        if not out[start]:
            del out[start]
        loop, prev, cur = [start], start, first
        while True:
            candidates = list(out.get(cur, []))
            if cur == start:
                candidates.append(first)
            if len(candidates) == 1:
                nxt = candidates[0]
            else:  # two ways on at a corner shared by diagonal pixels: turn right, keep with this pixel
                nxt = _right_of(prev, cur)
                if nxt not in candidates:  # pragma: no cover - impossible for edges of a binary mask
                    raise RuntimeError(f"contour tracing lost its way at {cur}")
            if cur == start and nxt == first:
                break
            loop.append(cur)
            out[cur].remove(nxt)
            if not out[cur]:
                del out[cur]
            prev, cur = cur, nxt
        loops.append(loop)
    return loops


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    prev, nxt = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    d1, d2 = points - prev, nxt - points
    turn = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    return points[turn != 0]


def boundary_polygons(mask: np.ndarray) -> list[Polygon]:
    """Every boundary of a 2D mask (rows, columns) as its own polygon: outer boundaries and holes."""
    polygons = []
    for loop in _trace(_edges(mask)):
        corners = np.asarray(loop, float)  # (row, col) of padded corners
        vertices = _drop_collinear(np.column_stack([corners[:, 1] - 1.5, corners[:, 0] - 1.5]))
        # Outer boundaries run clockwise on screen (foreground on the right), i.e. positive area
        # with rows growing downwards; holes run the other way.
        polygons.append(Polygon(vertices, _signed_area(vertices) < 0))
    return polygons


def _ray_up_hit(polygons: list[np.ndarray], x: float, y: float) -> tuple[int, int, float]:
    """(polygon, edge index, y) of the nearest horizontal edge straight above (x, y)."""
    best = (-1, -1, -np.inf)
    for p, v in enumerate(polygons):
        a, b = v, np.roll(v, -1, axis=0)
        horizontal = (a[:, 1] == b[:, 1]) & (a[:, 1] < y)
        spans = (np.minimum(a[:, 0], b[:, 0]) <= x) & (x <= np.maximum(a[:, 0], b[:, 0]))
        for e in np.nonzero(horizontal & spans)[0]:
            if a[e, 1] > best[2]:
                best = (p, int(e), float(a[e, 1]))
    return best


def _cut_keyholes(polygons: list[Polygon]) -> list[Polygon]:
    """Merge every hole into the polygon around it through a vertical zero-width channel.

    Holes are merged from the top down, so the channel from a hole's top vertex straight up first
    meets the polygon around it (or a hole of it merged already), never another polygon.
    """
    outers = [p.vertices for p in polygons if not p.is_hole]
    holes = sorted((p.vertices for p in polygons if p.is_hole),
                   key=lambda v: (v[:, 1].min(), v[np.argmin(v[:, 1]), 0]))
    for hole in holes:
        top = int(np.lexsort((hole[:, 0], hole[:, 1]))[0])  # topmost, then leftmost vertex
        x, y = hole[top]
        p, e, hit_y = _ray_up_hit(outers, x, y)
        if p < 0:  # pragma: no cover - a hole always lies inside an outer boundary
            raise RuntimeError("a hole outside every contour")
        v = outers[p]
        hit = np.array([[x, hit_y]])
        ring = np.roll(hole, -top, axis=0)  # starts at the top vertex
        outers[p] = _without_repeats(np.concatenate([v[:e + 1], hit, ring, ring[:1], hit, v[e + 1:]]))
    return [Polygon(v, False) for v in outers]


def _without_repeats(points: np.ndarray) -> np.ndarray:
    """Drop a point equal to the one before it (cyclically)."""
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    return points[keep]


def slice_polygons(mask: np.ndarray, keyholes: bool = True) -> list[Polygon]:
    """The closed polygons of a 2D mask (rows, columns), holes cut in as keyholes (see above)."""
    polygons = boundary_polygons(mask)
    return _cut_keyholes(polygons) if keyholes else polygons


def rasterise(polygons: list[Polygon], shape: tuple[int, int], rule: str = "even-odd") -> np.ndarray:
    """Fill of pixel centres, polygons combined by the "even-odd" rule or as a "union"; for tests."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    inside = np.zeros(shape, bool)
    for polygon in polygons:
        v = polygon.vertices
        x0, y0 = v[:, 0], v[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        crossing = np.zeros(shape, bool)
        for a, b, c, d in zip(x0, y0, x1, y1):
            if b == d:
                continue
            spans = (rows > min(b, d)) & (rows <= max(b, d))
            x_at = a + (rows - b) * (c - a) / (d - b)
            crossing ^= spans & (cols < x_at)
        if rule == "union":
            inside |= crossing
        else:
            inside ^= crossing
    return inside
