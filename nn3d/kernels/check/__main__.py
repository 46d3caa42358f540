"""`python -m nn3d.kernels.check [NAME ...]`: see nn3d/kernels/check/__init__.py."""
from . import main

raise SystemExit(main())
