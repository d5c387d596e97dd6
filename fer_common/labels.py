"""Class names: FER-2013's seven emotions (the default label set) and how a data set's folders name its classes.

Class folders define the classes, as torchvision's ImageFolder does: any names, any number (at least 2).
The seven FER-2013 names are recognised in any spelling (`angry/` and `Angry/` both mean Angry); every other
folder name is kept as written (`Contempt/`, `positive/`).
"""

# FER-2013's integer labels 0..6 (the `emotion` column of fer2013.csv) index this list.
EMOTIONS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]

NUM_CLASSES = len(EMOTIONS)   # the shipped model's and the constructors' default
MIN_CLASSES = 2               # a classifier needs something to tell apart


def canonical_name(name: str) -> str | None:
    """'angry', 'ANGRY' or 'Angry' -> 'Angry'; None for a name that is no FER-2013 emotion."""
    lowered = name.strip().lower()
    for emotion in EMOTIONS:
        if emotion.lower() == lowered:
            return emotion
    return None


def class_name(folder_name: str) -> str:
    """The class a folder stands for: a FER-2013 emotion in its canonical spelling, any other name as written."""
    return canonical_name(folder_name) or folder_name


def order_names(names) -> list[str]:
    """FER-2013's emotions in their label order first, then any other names sorted (for tables, not for training)."""
    names = set(names)
    return [e for e in EMOTIONS if e in names] + sorted(names - set(EMOTIONS))


# How tables list a data set's splits: FER-2013's first, then validation_split.py's.
SPLIT_ORDER = ("train", "test", "public_test", "private_test", "train_new", "val_new")


def sort_splits(splits) -> list[str]:
    return sorted(splits, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER))


def count_table(counts: dict[str, dict[str, int]]) -> str:
    """Images per class (rows: FER-2013's emotions in label order, then any other classes) and split (columns),
    with a total row."""
    splits = sort_splits(counts)
    classes = order_names(c for s in splits for c in counts[s])
    first = max([10] + [len(c) + 2 for c in classes])
    widths = [max(len(s), 6) + 2 for s in splits]
    lines = [f"{'class':<{first}}" + "".join(f"{s:>{w}}" for s, w in zip(splits, widths))]
    for cls in classes:
        lines.append(f"{cls:<{first}}" + "".join(f"{counts[s].get(cls, 0):>{w}}" for s, w in zip(splits, widths)))
    lines.append(f"{'total':<{first}}" + "".join(f"{sum(counts[s].values()):>{w}}" for s, w in zip(splits, widths)))
    return "\n".join(lines)
