"""crowdloss: crowded-scene person detection on plain PyTorch.

Importing the package is cheap: it must not import torchvision, tensorboard or matplotlib.
"""
__version__ = "0.1.0"
