"""Contrastive training: data, losses, the loop, evaluation, and the sample corpus.

The library part of cliplab never imports this package; the trainer imports the library.
"""
