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
