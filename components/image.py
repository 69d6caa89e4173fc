"""The one place that names the project image.

Every component uses it as ``base_image``; ``make image`` builds it from the ``Dockerfile`` and tags
it with this name (the Makefile reads the ``IMAGE = "..."`` line below). ``ghcr.io/tcnet/tcnet`` is a
placeholder registry path: set your own registry here (one line), then ``make image`` and
``docker push`` -- see docs/deploy.md.
"""

IMAGE = "ghcr.io/tcnet/tcnet:0.1.0"
