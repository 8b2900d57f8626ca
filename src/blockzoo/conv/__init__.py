"""Convolution blocks: conv-BN-act, Inception, residual, depthwise, MBConv, dynamic kernels."""
