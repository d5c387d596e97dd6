"""Video and webcam: the frame source, the pipeline (detect, track, classify, smooth), sinks (window,
video file, CSV log), per-face summaries. Imports the base modules and infer/.
"""
