"""Helpers of the train stage (``tcnet/stages/train.py``): runtime setup and the epoch loops."""
