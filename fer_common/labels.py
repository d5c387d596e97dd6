"""Emotion names, in FER-2013's label order, and how data sets spell them."""

# FER-2013's integer labels 0..6 (the `emotion` column of fer2013.csv) index this list.
EMOTIONS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]

NUM_CLASSES = len(EMOTIONS)


def canonical_name(name: str) -> str | None:
    """'angry', 'ANGRY' or 'Angry' -> 'Angry'; None for a name that is no emotion of ours."""
    lowered = name.strip().lower()
    for emotion in EMOTIONS:
        if emotion.lower() == lowered:
            return emotion
    return None
