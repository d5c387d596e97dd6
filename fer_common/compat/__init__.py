"""Code written for the peers runs here with one changed import: their APIs, this toolkit's answers.

    from fer import FER, Video            ->  from fer_common.compat.fer import FER, Video
    from deepface import DeepFace         ->  from fer_common.compat.deepface import DeepFace

    fer.py        the `fer` package's FER (detect_emotions, top_emotion, ...), Video and InvalidImage
    fer_video.py  fer's Video: frames analysed one by one, fer's tables (pandas optional)
    deepface.py   deepface's DeepFace.analyze for the emotion action
    common.py     what they share: the peers' class names, the images they take, the one-time note

Each is a thin front end on fer_common.FER (the same detector, model and results as `fer analyse`), never a
second detect/classify path; settings of the peers' own detectors and models are accepted and, having
nothing to act on here, noted once (a UserWarning).
"""
