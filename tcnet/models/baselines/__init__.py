"""Baselines trained from scratch (no weights are ever downloaded): FCN, U-Net, U-Net++, UNet 3+,
DeepLabV3, DeepLabV3+, CE-Net. Each module exposes builder functions registered in
:mod:`tcnet.models.registry`."""
