"""Rectangle geometry: [x, y, w, h] boxes everywhere, one overlap rule for the tracker and the overlay."""


def overlap_area(a, b) -> float:
    """Area of the intersection of two [x, y, w, h] rectangles (0 when they do not overlap or only touch)."""
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dx, 0) * max(dy, 0)


def iou(a, b) -> float:
    """Intersection over union of two [x, y, w, h] rectangles, in [0, 1]; 0 for empty rectangles."""
    inter = overlap_area(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0
