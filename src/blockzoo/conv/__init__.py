"""Convolution blocks: conv-BN-act, Inception, residual, depthwise, MBConv, dynamic kernels.

Every module in this folder is imported here (which registers its entries) and
its ``__all__`` re-exported, so a new file needs no edit of this one.
"""

from blockzoo.registry import import_room

__all__ = import_room(__name__, __path__, globals())
