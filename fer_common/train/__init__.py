"""Training: the loop of both training scripts, its flags, loaders, augmentation, recipes (EMA, mixup,
distillation), early stopping, torchrun. Imports the base modules, model/ and datasets/.
"""
