"""Data sets on disk: getting FER-2013 (download, its file formats), the class-folder walk, the
stratified validation split. Imports the base modules only, and never PyTorch.
"""
