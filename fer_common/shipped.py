"""Where the files that ship with the toolkit (the trained model, the face detector) are found.

In a clone of the repository they are in `models/`; `pip install .` copies them into the package as
`fer_common/shipped/` (pyproject.toml maps one onto the other), so both layouts work without a flag.
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent / "models"
_INSTALLED = Path(__file__).resolve().parent / "shipped"


def shipped_dir() -> Path:
    """models/ of a checkout if it is there, else the copy inside an installed package."""
    return _CHECKOUT if _CHECKOUT.is_dir() else _INSTALLED


SHIPPED_MODELS_DIR = shipped_dir()
